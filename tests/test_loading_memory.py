"""Loading a ~500 MB checkpoint the way a run does (models.from_config) must not hold two copies of the weights in
host memory, and on a mesh of 8 devices no device may hold more than its share of the model (plus the tensor in
flight): each device reads only its own slices."""

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

D, F, LAYERS, VOCAB, HEADS = 768, 2048, 12, 32000, 12  # ~134M float32 parameters, ~536 MB

MEASURE = """
import collections, os, sys
import jax
devices = int(sys.argv[2])
jax.config.update("jax_num_cpu_devices", devices)  # fake CPU devices: set before the backend starts
from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig
from reft_jax.models import hf_io
from reft_jax.models.from_config import base_model

config = default_config()
config.model.path = sys.argv[1]
config.mesh.data, config.mesh.fsdp = 1, devices  # ZeRO-3: every weight split over all devices
jax.numpy.ones(1).block_until_ready()  # start the runtime before the baseline
statm = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
base = statm()

most = collections.Counter()  # device -> the most it held, looked at before each read and at the end


def look():
    buffers = {(s.device, s.data.unsafe_buffer_pointer()): s.data.nbytes  # a buffer once, whatever views it has
               for array in jax.live_arrays() for s in array.addressable_shards}
    held = collections.Counter()
    for (device, _), nbytes in buffers.items():
        held[device] += nbytes
    for device, nbytes in held.items():
        most[device] = max(most[device], nbytes)


read = hf_io._Reader.read
hf_io._Reader.read = lambda self, *args: (look(), read(self, *args))[1]
model = base_model(RunConfig.of(config))
look()
# VmHWM is the peak of this process image; ru_maxrss is not: Linux carries it over from the forking parent.
peak = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(base, peak, statm(), max(most.values()), len(model.embed_tokens[...].sharding.device_set))
"""


def write_checkpoint(folder):
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=VOCAB, hidden_size=D,
                  intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=HEADS, tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "lm_head.weight": (VOCAB, D), "model.norm.weight": (D,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes.update({p + f"self_attn.{n}_proj.weight": (D, D) for n in "qkvo"})
        shapes.update({p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
                       p + "post_attention_layernorm.weight": (D,)})
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    save_file(tensors, folder / "model.safetensors")
    return sum(t.nbytes for t in tensors.values()), max(t.nbytes for t in tensors.values())


@pytest.mark.parametrize("devices", [1, 8])
def test_peak_memory_of_loading(tmp_path, devices):
    size, largest = write_checkpoint(tmp_path)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), str(devices)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    base, peak, after, device_peak, spread = map(int, out.stdout.split())
    mib = 2 ** 20
    print(f"checkpoint {size / mib:.0f} MiB on {devices} device(s); resident before load {base / mib:.0f} MiB, peak "
          f"{peak / mib:.0f} MiB (+{(peak - base) / mib:.0f} MiB = {(peak - base) / size:.2f}x the weights), "
          f"after {after / mib:.0f} MiB; the most one device held {device_peak / mib:.0f} MiB")
    assert after - base > 0.9 * size  # the weights are really there
    assert peak - base < 1.75 * size  # two copies would be >= 2x
    assert spread == devices
    if devices > 1:  # its share, plus the one tensor being read; the whole model before it is sharded is 1x
        assert device_peak <= size / devices + largest
