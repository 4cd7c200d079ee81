"""The cuDNN fused attention path (model.attention='cudnn') against the XLA path: logits and gradients of the
same weights on right-padded rows, with and without a sliding window. Needs a CUDA GPU; skipped elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reft_jax.models import ModelConfig, RuntimeOptions, Transformer
from reft_jax.train import losses

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU (cuDNN)")

B, T, PAD = 2, 128, 40


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("window", [0, 32])
def test_cudnn_equals_xla_forward_and_gradients(window):
    cfg = ModelConfig("llama", 512, 256, 512, 2, 4, 2, 64, layer_windows=(window, window))
    rng = np.random.default_rng(0)
    mask = np.ones((B, T), np.int32)
    mask[1, T - PAD:] = 0  # right padding
    ids = jnp.asarray(rng.integers(1, 512, (B, T)) * mask, jnp.int32)
    mask = jnp.asarray(mask)
    loss_mask = mask.at[:, :16].set(0)

    def run(attention):
        model = Transformer(cfg, RuntimeOptions(dtype=jnp.bfloat16, attention=attention), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(p):
            logits = nnx.merge(graphdef, p)(ids, mask).logits
            return losses.cross_entropy(logits, ids, loss_mask)[0], logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, grads

    logits_cudnn, grads_cudnn = run("cudnn")
    logits_xla, grads_xla = run("xla")
    real = np.asarray(mask, bool)
    assert relative_error(np.asarray(logits_cudnn, np.float32)[real], np.asarray(logits_xla, np.float32)[real]) < 2e-2
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_cudnn), jax.tree.leaves(grads_xla)):
        assert relative_error(a, b) < 5e-2, jax.tree_util.keystr(path)
