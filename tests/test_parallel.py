"""Sharding: the mesh from config, the logical-axis rules, sharded steps and checkpoints, memory planning.

The multi-device checks need 8 fake CPU devices, which this process (JAX already started with one) cannot
get; one subprocess runs them all and prints its findings as JSON, and the tests below read them.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from train_fixtures import small_config, synthetic_batch, teacher_loss, tiny_model

from reft_jax.config import default_config
from reft_jax.errors import ConfigError
from reft_jax.runtime import parallel
from reft_jax.runtime.state import create_train_state
from reft_jax.train.optim import make_optimizer
from reft_jax.train.steps import make_step

HERE = Path(__file__).parent
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2), (1, 2, 4)]  # the last: 2 kv heads on tensor=4

MULTI_DEVICE = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)
# Compiles several times faster; SPMD partitioning, what is under test, still runs in full.
jax.config.update("jax_disable_most_optimizations", True)
import jax.numpy as jnp
import numpy as np
from flax import nnx
from train_fixtures import small_config, student_loss, synthetic_batch, teacher_loss
from reft_jax.runtime import parallel
from reft_jax.models import LoraConfig, ModelConfig, RuntimeOptions, Transformer, from_pretrained, save_pretrained
from reft_jax.train.optim import make_optimizer
from reft_jax.runtime.state import FrozenModel, create_train_state
from reft_jax.train.steps import make_step

MESHES, workdir = json.loads(sys.argv[1]), sys.argv[2]
CFG = ModelConfig("llama", 64, 32, 64, 2, 4, 2, 8)  # vocab, hidden, mlp, layers, heads, kv heads, head_dim
UNITS = parallel.head_units(CFG)
tx = make_optimizer(small_config().optim, 10)
r = jnp.linspace(-1.0, 1.0, CFG.hidden_size)


def model(seed, lora):
    opts = RuntimeOptions(lora=LoraConfig(rank=2) if lora else None, scan_layers=lora)
    return Transformer(CFG, opts, rngs=nnx.Rngs(seed))


def batch(i):  # 8 rows, so that every mesh splits them
    a, b = synthetic_batch(i), synthetic_batch(i + 50)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def losses(mesh, lora=False):
    if mesh is None:  # one device, jax.jit's own placement: the reference
        teacher_state = create_train_state(model(0, lora), tx)
        teacher_step = make_step(tx, teacher_loss())
    else:
        # On the mesh: blockwise losses and activation constraints too; the reference has neither.
        teacher_state = parallel.create_sharded_train_state(model(0, lora), tx, mesh, units=UNITS)
        state_sharding = parallel.train_state_sharding(teacher_state, mesh, units=UNITS)
        batch_sharding = parallel.batch_sharding(batch(0), mesh)
        teacher_step = make_step(tx, teacher_loss(block=8), state_sharding=state_sharding,
                                 arg_shardings=(None, batch_sharding),
                                 activation_sharding=parallel.activation_sharding(mesh))
    out = []
    for i in range(3):
        teacher_state, metrics = teacher_step(teacher_state, r, batch(i))
        out.append(float(metrics["loss"]))
    teacher = FrozenModel.of_train_state(teacher_state)
    if mesh is None:
        student = create_train_state(model(1, lora), tx)
        student_step = make_step(tx, student_loss())
    else:
        student = parallel.create_sharded_train_state(model(1, lora), tx, mesh, units=UNITS)
        state_sharding = parallel.train_state_sharding(student, mesh, units=UNITS)
        batch_sharding = parallel.batch_sharding(batch(0), mesh)
        student_step = make_step(tx, student_loss(block=8), state_sharding=state_sharding,
                                 arg_shardings=(parallel.frozen_model_sharding(teacher, mesh, units=UNITS),
                                                batch_sharding, batch_sharding),
                                 activation_sharding=parallel.activation_sharding(mesh))
    for i in range(3):
        student, metrics = student_step(student, teacher, parallel.shard_batch(batch(10 + i), mesh)
                                        if mesh else batch(10 + i), batch(20 + i))
        out.append(float(metrics["loss"]))
    specs = {}
    if mesh is not None:  # where the state ended up after the steps
        for name, tree in (("params", student.params), ("frozen", student.frozen),
                           ("mu", student.opt_state[1][0].mu)):
            for path, v in nnx.to_flat_state(tree):
                specs[f"{name}/{'/'.join(map(str, path))}"] = [v.shape, list(v[...].sharding.spec)]
    return out, specs


def make_mesh(shape):
    return parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))


result = {"reference": losses(None)[0], "meshes": {}}
for shape in MESHES:
    result["meshes"][str(tuple(shape))] = losses(make_mesh(shape))
result["lora_reference"] = losses(None, lora=True)[0]
result["lora"] = losses(make_mesh((2, 2, 2)), lora=True)

# A checkpoint loaded straight into the mesh (reads spied on) against an unsharded load.
ckpt_cfg = ModelConfig("qwen3", 61, 32, 48, 2, 4, 2, 8, qk_norm=True)  # vocab 61 divides by nothing
save_pretrained(Transformer(ckpt_cfg, rngs=nnx.Rngs(3)), workdir)
mesh = make_mesh((1, 2, 4))
placer = parallel.mesh_placer(mesh, units=parallel.head_units(ckpt_cfg))
reads = []  # per parameter placed: [shape, axes, shapes of the slices read]


def spying_placer(shape, axes, read):
    log = []
    reads.append([shape, axes, log])

    def spy(index):
        values = read(index)
        log.append(values.shape)
        return values

    return placer(shape, axes, spy)


sharded = from_pretrained(workdir, placer=spying_placer)
plain = from_pretrained(workdir)
ids = np.random.default_rng(0).integers(0, 61, (4, 12))


def logits(m):
    graphdef, state = nnx.split(m)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits)(state, ids))


result["checkpoint"] = dict(
    specs={"/".join(map(str, path)): [v.shape, list(v.get_metadata()["axes"]), list(v[...].sharding.spec)]
           for path, v in nnx.to_flat_state(nnx.state(sharded))},
    reads=reads,
    max_logit_diff=float(np.abs(logits(sharded) - logits(plain)).max()))

# The run's own loading (models.from_config on the config's mesh), then its train state and frozen model on it.
from reft_jax.config import default_config
from reft_jax.config.schema import RunConfig
from reft_jax.models.from_config import base_model, trainable
from reft_jax.runtime.state import FrozenModel

config = default_config()
config.model.path, config.model.lora.rank = str(workdir), 2
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
run_cfg = RunConfig.of(config)
loaded = base_model(run_cfg)
flat = lambda tree: {"/".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(tree)}
buffers = lambda tree: {k: [s.data.unsafe_buffer_pointer() for s in a.addressable_shards] for k, a in flat(tree).items()}
want, want_placed = flat(nnx.state(plain)), flat(nnx.state(sharded))
result["from_config"] = dict(
    same_values=all(np.array_equal(np.asarray(a), np.asarray(want[k])) for k, a in flat(nnx.state(loaded)).items()),
    same_shardings=all(a.sharding == want_placed[k].sharding for k, a in flat(nnx.state(loaded)).items()))
loaded_buffers = buffers(nnx.state(loaded))
ckpt_units = parallel.head_units(ckpt_cfg)
state = parallel.create_sharded_train_state(trainable(run_cfg, loaded, "teacher_adapters"), tx, mesh, units=ckpt_units)
result["from_config"]["state_moved"] = [k for k, b in buffers(state.frozen).items() if b != loaded_buffers[k]]
teacher = base_model(run_cfg)
teacher_buffers = buffers(nnx.state(teacher))
frozen = parallel.shard_frozen_model(FrozenModel.of(teacher), mesh, units=ckpt_units)
result["from_config"]["frozen_moved"] = [k for state in frozen.states for k, b in buffers(state).items()
                                         if b != teacher_buffers[k]]
print("RESULT" + json.dumps(result))
"""


def _spec(entries):
    """A spec as the JSON gives it back: lists for multi-axis entries."""
    return P(*(tuple(e) if isinstance(e, list) else e for e in entries))


@pytest.fixture(scope="module")
def multi_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ckpt")
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE, json.dumps(MESHES), str(workdir)], cwd=HERE,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    # XLA's warning when it cannot move an array between two shardings except by replicating it whole.
    result["involuntary_remat"] = [w for w in out.stderr.splitlines() if "Involuntary full rematerialization" in w]
    return result


# ------------------------------------------------------------------------------------- mesh and rules

def test_mesh_shape_from_config():
    assert parallel.mesh_shape(default_config().mesh, 8) == (8, 1, 1)
    assert parallel.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
    assert parallel.mesh_shape(dict(data=1, fsdp=4, tensor=2), 8) == (1, 4, 2)
    mesh = parallel.make_mesh(default_config().mesh)
    assert mesh.axis_names == parallel.MESH_AXES and mesh.devices.size == len(jax.devices())


@pytest.mark.parametrize("sizes, words", [
    (dict(data=3, fsdp=1, tensor=1), "data=3 x fsdp=1 x tensor=1 = 3 devices, but there are 8"),
    (dict(data=-1, fsdp=3, tensor=1), "does not divide the 8 devices"),
    (dict(data=-1, fsdp=-1, tensor=1), "at most one -1"),
    (dict(data=0, fsdp=1, tensor=8), "must be positive"),
])
def test_mesh_errors_are_one_line(sizes, words):
    with pytest.raises(ConfigError, match="mesh: ") as e:
        parallel.mesh_shape(sizes, 8)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_rules_cover_every_axis_and_fall_back_to_replicated():
    mesh = AbstractMesh((2, 2, 4), parallel.MESH_AXES)
    assert set(parallel.LOGICAL_RULES) >= {"batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp",
                                           "vocab", "layers"}
    units = {"heads": 8, "kv_heads": 8}
    spec = lambda axes, shape: parallel.logical_to_spec(axes, shape, mesh, units=units)  # noqa: E731
    assert spec(("embed", "heads"), (2, 32, 32)) == P(None, "fsdp", "tensor")  # stacked: layer axis whole
    assert spec(("embed", "kv_heads"), (2, 32, 16)) == P(None, "fsdp", None)  # 2 kv heads on tensor=4
    assert spec(("embed", "kv_heads"), (2, 32, 32)) == P(None, "fsdp", "tensor")  # 4 kv heads
    assert spec(("vocab", "embed"), (61, 32)) == P(None, "fsdp")  # 61 divides by nothing
    assert spec(("batch", "length"), (8, 16)) == P(("data", "fsdp"), None)
    assert spec(("batch", "length"), (2, 16)) == P("data", None)  # the prefix of the mesh axes that divides
    assert spec(("batch", "embed"), (8, 32)) == P(("data", "fsdp"), None)  # fsdp is taken by the batch
    assert spec(("head_dim",), (2, 8)) == P(None, None)
    with pytest.raises(ValueError, match="no sharding rule"):
        spec(("nonsense",), (4,))


def test_optimizer_state_follows_the_params():
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1))
    state = create_train_state(tiny_model(), make_optimizer(small_config().optim, 10))
    shardings = parallel.train_state_sharding(state, mesh)
    kernel = ("layers", "self_attn", "q_proj", "kernel")
    want = P(None, "fsdp", "tensor")

    def at(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    assert at(shardings.params, kernel).spec == want
    assert at(shardings.opt_state[1][0].mu, kernel).spec == want
    assert shardings.opt_state[1][0].count.spec == P()
    # A state whose leaves lost their Variable wrappers is matched to the params by path and shape.
    plain = {"moments": {"mu": nnx.to_pure_dict(state.params)}, "count": jnp.zeros((), jnp.int32)}
    matched = parallel.opt_state_sharding(plain, state.params, mesh)
    assert at(matched["moments"]["mu"], kernel).spec == want and matched["count"].spec == P()
    sharded = parallel.shard_train_state(state, mesh)
    assert at(sharded.params, kernel)[...].sharding.spec == want


# ------------------------------------------------------------------------------------ multi-device steps

@pytest.mark.parametrize("shape", MESHES)
def test_sharded_steps_match_one_device(multi_device, shape):
    losses, _ = multi_device["meshes"][str(shape)]
    np.testing.assert_allclose(losses, multi_device["reference"], rtol=1e-5)


def test_sharded_steps_need_no_involuntary_rematerialization(multi_device):
    """With the activations constrained (models/activations.py) XLA never has to replicate a whole array to
    change its sharding, on any of the meshes, the (2, 2, 2) data x fsdp x tensor mesh included."""
    assert multi_device["involuntary_remat"] == []


def test_sharded_lora_scan_steps_match_one_device(multi_device):
    losses, specs = multi_device["lora"]
    np.testing.assert_allclose(losses, multi_device["lora_reference"], rtol=1e-5)
    # (2, 2, 2): adapters follow their kernel's sharded axis; the frozen base weights are sharded too.
    assert _spec(specs["params/layers/self_attn/q_proj/lora_a"][1]) == P(None, "fsdp", None)
    assert _spec(specs["params/layers/self_attn/q_proj/lora_b"][1]) == P(None, None, "tensor")
    assert _spec(specs["frozen/layers/mlp/up_proj/kernel"][1]) == P(None, "fsdp", "tensor")


def test_state_keeps_its_sharding_through_the_steps(multi_device):
    _, specs = multi_device["meshes"][str((1, 2, 4))]
    assert _spec(specs["params/layers/self_attn/q_proj/kernel"][1]) == P(None, "fsdp", "tensor")
    assert _spec(specs["params/layers/self_attn/k_proj/kernel"][1]) == P(None, "fsdp", None)  # 2 kv heads
    assert _spec(specs["mu/layers/self_attn/q_proj/kernel"][1]) == P(None, "fsdp", "tensor")
    assert _spec(specs["params/embed_tokens"][1]) == P("tensor", "fsdp")


# --------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_loads_into_the_rules_shardings(multi_device):
    ckpt = multi_device["checkpoint"]
    mesh = AbstractMesh((1, 2, 4), parallel.MESH_AXES)
    units = {"heads": 8, "kv_heads": 8}
    for name, (shape, axes, got) in ckpt["specs"].items():
        want = parallel.logical_to_spec(axes, shape, mesh, units=units)
        assert _spec(got) == want, name
    # The rules' choices, spelled out for this mesh (fsdp=2, tensor=4; vocab 61 and 2 kv heads stay whole).
    expected = {
        "embed_tokens": P(None, "fsdp"),
        "lm_head/kernel": P("fsdp", None),
        "norm/scale": P("fsdp"),
        "layers/self_attn/q_proj/kernel": P(None, "fsdp", "tensor"),
        "layers/self_attn/k_proj/kernel": P(None, "fsdp", None),
        "layers/self_attn/o_proj/kernel": P(None, "tensor", "fsdp"),
        "layers/self_attn/q_norm/scale": P(None, None),
        "layers/mlp/down_proj/kernel": P(None, "tensor", "fsdp"),
        "layers/input_layernorm/scale": P(None, "fsdp"),
    }
    for name, spec in expected.items():
        assert _spec(ckpt["specs"][name][2]) == spec, name
    assert ckpt["max_logit_diff"] < 1e-5


def test_checkpoint_reads_only_each_shard_once(multi_device):
    reads = {}
    for shape, axes, slices in multi_device["checkpoint"]["reads"]:
        reads.setdefault((tuple(shape), tuple(axes)), []).append(slices)
    # q_proj, split fsdp=2 x tensor=4: eight distinct [2, 16, 8] slices, each read once.
    assert reads[(2, 32, 32), ("embed", "heads")] == [[[2, 16, 8]] * 8]
    # k_proj and v_proj (2 kv heads stay whole), split on fsdp only: two slices each, not one per device.
    assert reads[(2, 32, 16), ("embed", "kv_heads")] == [[[2, 16, 16]] * 2] * 2


def test_a_run_loads_its_checkpoint_into_its_mesh(multi_device):
    """models.from_config on the config's mesh: the same values, placed as the rules say while they are read, and
    the train state and the frozen model built on them keep the very buffers (nothing copied)."""
    loaded = multi_device["from_config"]
    assert loaded["same_values"] and loaded["same_shardings"]
    assert loaded["state_moved"] == [] and loaded["frozen_moved"] == []


# -------------------------------------------------------------------------------------- memory planning

def test_memory_report_and_fit_check():
    tx = make_optimizer(small_config().optim, 10)
    step = make_step(tx, teacher_loss())
    state = create_train_state(tiny_model(), tx)
    memory = parallel.compiled_memory(step, state, jnp.ones((32,), jnp.float32), synthetic_batch(0))
    assert memory["peak_bytes"] > 0 and memory["argument_bytes"] > 0 and memory["output_bytes"] > 0
    lines = []
    assert parallel.plan_memory(step, state, jnp.ones((32,), jnp.float32), synthetic_batch(0),
                                available=2**40, log=lines.append) == memory
    assert len(lines) == 1 and "per device" in lines[0]
    assert "fit check skipped" in parallel.check_memory_fits(memory)  # the CPU does not say its memory
    with pytest.raises(ConfigError) as e:
        parallel.check_memory_fits(memory, available=1000, what="teacher step")
    message = str(e.value)
    assert "\n" not in message and f"needs {memory['peak_bytes']} bytes" in message and "has 1000 bytes" in message
