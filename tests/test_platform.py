"""megatron_mile.platform against the installed megatron-core (0.16.1 through 0.19.x).

Every patch checks its target before changing anything: a renamed, re-signed or no longer used
target raises PlatformPatchError naming it and the installed release (the patch would otherwise do
nothing, silently). The patches that do apply are checked by their effect in megatron-core itself,
and SDPACoreAttention and the layout-invariant initialisation against megatron's own modules.
"""

import inspect
import os
import re

import pytest
import torch
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.tensor_parallel import random as megatron_random
from megatron.core.transformer.dot_product_attention import DotProductAttention
from packaging.specifiers import SpecifierSet

from megatron_mile import platform
from megatron_mile.platform import PlatformPatchError

WORLD_SIZE = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITER = filesystem_async.FileSystemWriterAsync


def _writer_names():
    """(queue factory, writer) of the installed release, read from megatron-core, not from platform."""
    if hasattr(filesystem_async, "_get_write_results_queue"):
        return "_get_write_results_queue", "write_preloaded_data_multiproc"
    return "get_write_results_queue", "write_preloaded_data_multithread"


def _keep(monkeypatch, owner, name):
    """Let monkeypatch restore ``owner.name`` after the test, whatever the code under test does."""
    monkeypatch.setattr(owner, name, inspect.getattr_static(owner, name))


def _assert_names(error, *words):
    message = str(error.value)
    for word in (*words, f"megatron-core {platform.megatron_core_version()}"):
        assert word in message, message


# -- version range ------------------------------------------------------------------------------

def test_installed_megatron_core_is_in_the_supported_range_declared_by_setup_py():
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    declared = re.search(r'"megatron-core([^"]+)"', setup).group(1)
    assert SpecifierSet(declared) == SpecifierSet(platform.SUPPORTED_MEGATRON_CORE)
    assert platform.megatron_core_version() in SpecifierSet(declared)


# -- P5: the checkpoint writer's targets --------------------------------------------------------

@pytest.mark.parametrize("missing", ["queue", "writer"])
def test_renamed_checkpoint_writer_target_fails_loudly_and_patches_nothing(monkeypatch, missing):
    queue_name, writer_name = _writer_names()
    _keep(monkeypatch, filesystem_async, queue_name)
    _keep(monkeypatch, WRITER, writer_name)
    owner, name = (filesystem_async, queue_name) if missing == "queue" else (WRITER, writer_name)
    monkeypatch.delattr(owner, name)  # as if megatron-core had renamed it
    other_owner, other_name = (WRITER, writer_name) if missing == "queue" else (filesystem_async, queue_name)
    before = inspect.getattr_static(other_owner, other_name)
    with pytest.raises(PlatformPatchError) as error:
        platform.write_checkpoints_in_process()
    _assert_names(error, f"{name} does not exist")
    assert inspect.getattr_static(other_owner, other_name) is before


def test_checkpoint_writer_with_another_signature_fails_loudly(monkeypatch):
    _, writer_name = _writer_names()
    _keep(monkeypatch, filesystem_async, _writer_names()[0])
    monkeypatch.setattr(WRITER, writer_name, staticmethod(lambda write_buckets, results_queue: None))
    with pytest.raises(PlatformPatchError) as error:
        platform.write_checkpoints_in_process()
    _assert_names(error, f"FileSystemWriterAsync.{writer_name}", "takes (write_buckets, results_queue)")


def test_checkpoint_writer_no_longer_called_fails_loudly(monkeypatch):
    """megatron-core adds a new writer and keeps the old name around: patching it would do nothing."""
    queue_name, writer_name = _writer_names()
    _keep(monkeypatch, filesystem_async, queue_name)
    _keep(monkeypatch, WRITER, writer_name)

    def get_save_function_and_args(self):
        return self.write_preloaded_data_elsewhere, None, []

    monkeypatch.setattr(WRITER, "get_save_function_and_args", get_save_function_and_args)
    with pytest.raises(PlatformPatchError) as error:
        platform.write_checkpoints_in_process()
    _assert_names(error, writer_name, "is no longer used by", "get_save_function_and_args")


def test_missing_rng_tracker_global_fails_loudly(monkeypatch):
    _keep(monkeypatch, megatron_random, "_CUDA_RNG_STATE_TRACKER")
    monkeypatch.delattr(megatron_random, "_CUDA_RNG_STATE_TRACKER")
    with pytest.raises(PlatformPatchError) as error:
        platform._install_cpu_rng_tracker()
    _assert_names(error, "megatron.core.tensor_parallel.random._CUDA_RNG_STATE_TRACKER", "does not exist")


def test_missing_process_memory_hook_fails_loudly_without_psutil(monkeypatch):
    _keep(monkeypatch, filesystem_async, "_process_memory")
    monkeypatch.delattr(filesystem_async, "_process_memory")
    monkeypatch.setattr(platform.importlib.util, "find_spec", lambda name: None)  # psutil "missing"
    with pytest.raises(PlatformPatchError) as error:
        platform.guard_dist_checkpointing()
    _assert_names(error, "filesystem_async._process_memory")


def _save_in_daemonic_worker(directory):
    """A dist_checkpointing save in a daemonic pool worker (no child processes allowed there),
    read back with torch.distributed.checkpoint's own reader."""
    import psutil
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    platform.adapt_megatron_to_cpu()
    rank, world = dist.get_rank(), dist.get_world_size()
    full = torch.arange(4 * world * 3, dtype=torch.float32).reshape(4 * world, 3)
    local = full[4 * rank:4 * (rank + 1)].clone()
    dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", local, (0, rank, world))}, directory)
    no_manager = filesystem_async._results_queue is None
    children = len(psutil.Process().children(recursive=True))
    dist.barrier()
    read = {"w": torch.zeros_like(full)}
    dcp.load(read, storage_reader=dcp.FileSystemReader(directory), no_dist=True)
    return no_manager, children, torch.equal(read["w"], full)


def test_checkpoint_written_in_process_in_a_daemonic_worker(dist_pool, tmp_path):
    directory = str(tmp_path / "ckpt")
    os.makedirs(directory)
    for no_manager, children, equal in dist_pool.run(_save_in_daemonic_worker, directory):
        assert no_manager and children == 0 and equal


# -- SDPACoreAttention and the layout-invariant initialisation ----------------------------------

def test_sdpa_core_attention_takes_dot_product_attentions_parameters():
    from megatron_mile.model import SDPACoreAttention

    ours = inspect.signature(SDPACoreAttention.__init__).parameters
    megatrons = inspect.signature(DotProductAttention.__init__).parameters
    assert list(ours) == list(megatrons)
    for name, parameter in megatrons.items():
        if parameter.default is not inspect.Parameter.empty:
            assert ours[name].default == parameter.default, name


def _tiny_config(**overrides):
    from megatron.core.transformer import TransformerConfig

    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=64, normalization="RMSNorm", gated_linear_unit=True,
                  activation_func=torch.nn.functional.silu, add_bias_linear=False,
                  use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0)
    fields.update(overrides)
    return TransformerConfig(**fields)


def _attention_outputs(dropout):
    """megatron's DotProductAttention and SDPACoreAttention built with the keywords SelfAttention
    passes (plus attention_dropout), on the same causal inputs."""
    from megatron.core import tensor_parallel
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mile.model import SDPACoreAttention

    platform.adapt_megatron_to_cpu()
    tensor_parallel.model_parallel_cuda_manual_seed(1234)
    config = _tiny_config(attention_dropout=0.5)
    tp = torch.distributed.get_world_size()  # called at tp=WORLD_SIZE
    kwargs = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
                  attention_dropout=dropout, softmax_scale=None, cp_comm_type=None)
    megatrons, ours = DotProductAttention(**kwargs).eval(), SDPACoreAttention(**kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    s, b, heads, groups, dim = 6, 2, 4 // tp, 2 // tp, 8
    q = torch.randn(s, b, heads, dim, generator=gen)
    k, v = (torch.randn(s, b, groups, dim, generator=gen) for _ in range(2))
    mask = torch.triu(torch.ones(1, 1, s, s, dtype=torch.bool), diagonal=1)  # True = masked out
    with platform.cuda_to_cpu():
        expected = megatrons(q, k, v, mask, attn_mask_type=AttnMaskType.causal)
    return (expected - ours(q, k, v, mask, attn_mask_type=AttnMaskType.causal)).abs().max().item(), \
        megatrons.attention_dropout.p, ours.dropout_p


def test_sdpa_core_attention_matches_dot_product_attention(dist_pool):
    for error, megatron_p, our_p in dist_pool.run(_attention_outputs, 0.25, tp=2):
        assert error < 1e-6
        assert megatron_p == our_p == 0.25  # the attention_dropout argument overrides the config's


def _initialisation_by_method(position_embedding_type):
    """Which init method megatron's own construction used for every matrix, against the one
    initialize_layout_invariant_ picks: each method fills a different constant."""
    from megatron.core.models.gpt import GPTModel

    from megatron_mile.model import gpt_layer_spec, initialize_layout_invariant_

    platform.adapt_megatron_to_cpu()
    fill = {"init": 1.0, "output_layer_init": 2.0, "embedding_init": 3.0}
    config = _tiny_config(**{f"{kind}_method": (lambda value: lambda w: torch.nn.init.constant_(w, value))(value)
                             for kind, value in fill.items()})
    model = GPTModel(config=config, transformer_layer_spec=gpt_layer_spec("local", "RMSNorm", True),
                     vocab_size=64, max_sequence_length=16, position_embedding_type=position_embedding_type,
                     share_embeddings_and_output_weights=False)
    by_megatron = {name: p.flatten()[0].item() for name, p in model.named_parameters() if p.dim() >= 2}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    initialize_layout_invariant_([model], config, seed=1)
    by_ours = {name: p.flatten()[0].item() for name, p in model.named_parameters() if p.dim() >= 2}
    return by_megatron, by_ours


@pytest.mark.parametrize("position_embedding_type", ["rope", "learned_absolute"])
def test_layout_invariant_init_uses_megatrons_init_method_for_every_matrix(dist_pool, position_embedding_type):
    for by_megatron, by_ours in dist_pool.run(_initialisation_by_method, position_embedding_type, tp=2):
        assert by_ours == by_megatron
        assert {2.0, 3.0} <= set(by_megatron.values())  # the names matched output projections and embeddings
