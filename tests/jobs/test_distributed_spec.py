"""What a job on several devices asks for: the combinations refused (and why), the queue its
message goes to, the warning while no worker owns enough devices, and its memory per device."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.chat.catalog import BaseModelInfo
from app.contract.spec import Parallelism, TrainingSpec
from app.core.queue import device_queue, device_queues, gang_queue, worker_queues
from app.core.tables import Job, JobState
from app.jobs.memory_estimate import GIB, estimate_memory
from app.jobs.workers import queue_warning
from worker.distributed_job import resolve_parallelism

# Llama-3.1-8B's shape.
LLAMA_8B = BaseModelInfo(
    name="llama-8b",
    source="local",
    path=Path("/models/llama-8b"),
    architecture="LlamaForCausalLM",
    model_type="llama",
    parameters=8_030_000_000,
    hidden_size=4096,
    num_layers=32,
    vocab_size=128256,
    max_positions=131072,
    has_chat_template=True,
    intermediate_size=14336,
    num_heads=32,
    num_kv_heads=8,
)


def spec(**settings) -> TrainingSpec:
    return TrainingSpec(base_model="tiny-llama", **settings)


def test_one_device_is_the_default_and_leaves_the_spec_as_it_was():
    single = spec()
    assert single.num_devices == 1 and not single.distributed
    assert {"num_devices", "parallelism", "fsdp"}.isdisjoint(single.values_used())
    assert spec(num_devices=4, parallelism="fsdp").values_used()["fsdp"]["auto_wrap"] == "decoder_layer"
    assert "fsdp" not in spec(num_devices=4, parallelism="ddp").values_used()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"parallelism": "fsdp"}, "parallelism fsdp splits a job across devices: set num_devices to 2 or more"),
        ({"num_devices": 2, "method": "qlora", "parallelism": "fsdp"}, "qlora cannot be sharded with fsdp here"),
        ({"num_devices": 2, "objective": "dpo"}, "dpo trains on one device only for now"),
        (
            {"num_devices": 2, "parallelism": "fsdp", "gradient_checkpointing": True},
            "with fsdp, set fsdp.activation_checkpointing instead of gradient_checkpointing",
        ),
        ({"num_devices": 0}, "greater than or equal to 1"),
        ({"num_nodes": 0}, "greater than or equal to 1"),
        ({"num_nodes": 33}, "less than or equal to 32"),
        ({"num_nodes": 2, "objective": "dpo"}, "dpo trains on one device only for now: set num_nodes and num_devices"),
        ({"num_nodes": 2, "num_devices": 2, "objective": "kto", "batch_size": 2}, "kto trains on one device only"),
        ({"num_nodes": 2, "method": "qlora", "parallelism": "fsdp"}, "qlora cannot be sharded with fsdp here"),
        ({"num_nodes": 32, "num_devices": 64}, "num_nodes x num_devices is 2048: at most 512 processes"),
    ],
)
def test_refused_combinations_say_why(settings, message):
    with pytest.raises(ValidationError, match=message):
        spec(**settings)


def test_the_accepted_combinations():
    for method in ("lora", "full"):
        for parallelism in ("ddp", "fsdp", "auto"):
            assert spec(num_devices=2, method=method, parallelism=parallelism).distributed
    assert spec(num_devices=2, method="qlora", parallelism="ddp").distributed
    assert spec(num_devices=8, method="qlora").parallelism == Parallelism.auto  # auto: DDP for QLoRA


def test_auto_takes_ddp_when_the_model_fits_one_device_and_fsdp_when_it_does_not():
    job = spec(num_devices=2, method="full")
    assert resolve_parallelism(job, device_memory_bytes=80 * GIB, model_bytes=30 * GIB) == Parallelism.ddp
    assert resolve_parallelism(job, device_memory_bytes=80 * GIB, model_bytes=120 * GIB) == Parallelism.fsdp
    assert resolve_parallelism(job, device_memory_bytes=None, model_bytes=None) == Parallelism.ddp  # CPU
    qlora = spec(num_devices=2, method="qlora")
    assert resolve_parallelism(qlora, device_memory_bytes=24 * GIB, model_bytes=120 * GIB) == Parallelism.ddp
    chosen = spec(num_devices=2, method="full", parallelism="ddp")
    assert resolve_parallelism(chosen, device_memory_bytes=8 * GIB, model_bytes=120 * GIB) == Parallelism.ddp


def test_a_job_goes_to_the_queue_of_its_device_count_which_only_big_enough_workers_take():
    assert device_queue("default", 1) == "default"
    assert device_queue("a100", 4) == "a100.4-devices"
    assert device_queues("a100", 4) == ["a100", "a100.2-devices", "a100.3-devices", "a100.4-devices"]
    assert "a100.4-devices" not in device_queues("a100", 2)


def test_the_queue_warning_names_the_devices_a_job_waits_for():
    job = Job(queue="a100", spec=spec(num_devices=4).model_dump(mode="json"), state=JobState.queued)
    warning = queue_warning(job, served=Counter(["a100", "a100.2-devices"]))
    assert warning.startswith("No live worker with 4 devices serves the queue 'a100'")
    assert "--gpus-per-worker 4" in warning and "--cpu-processes 4" in warning
    assert queue_warning(job, served=Counter(device_queues("a100", 4))) is None


def test_the_queue_warning_of_a_job_on_several_nodes_counts_the_workers_it_needs_at_once():
    job = Job(queue="a100", spec=spec(num_devices=2, num_nodes=3).model_dump(mode="json"), state=JobState.queued)
    two_workers = Counter(device_queues("a100", 2) * 2)
    warning = queue_warning(job, served=two_workers)
    assert warning.startswith("The job runs on 3 nodes at once and 2 live workers with 2 devices serve the queue")
    assert "--gpus-per-worker 2" in warning
    assert "no live workers" in queue_warning(job, served=Counter(["a100"]))
    assert queue_warning(job, served=two_workers + Counter(device_queues("a100", 4))) is None


def test_fsdp_splits_the_training_state_across_devices_and_ddp_does_not():
    full = {"method": "full", "batch_size": 1, "max_seq_length": 2048}
    one = estimate_memory(LLAMA_8B, spec(**full))
    ddp = estimate_memory(LLAMA_8B, spec(num_devices=8, parallelism="ddp", **full))
    fsdp = estimate_memory(LLAMA_8B, spec(num_devices=8, parallelism="fsdp", **full))
    offload = estimate_memory(LLAMA_8B, spec(num_devices=8, parallelism="fsdp", fsdp={"cpu_offload": True}, **full))
    # A full fine-tune of 8B needs ~12 bytes a weight and its activations: more than an 80 GB card.
    assert one.total_bytes > 80 * GIB
    assert ddp.total_bytes > one.total_bytes  # a whole model each, and its gradient buckets
    assert fsdp.parts["AdamW states (fp32), 1/8 shard"] == pytest.approx(one.parts["AdamW states (fp32)"] / 8)
    assert fsdp.total_bytes < 40 * GIB < one.total_bytes, "sharded over 8 GPUs it fits a 40 GB card"
    assert offload.total_bytes < fsdp.total_bytes


def test_several_nodes_multiply_the_world_size():
    single = spec()
    assert single.num_nodes == 1 and single.world_size == 1 and not single.multi_node
    assert "num_nodes" not in single.values_used()
    gang = spec(num_nodes=2)  # one device on each of two machines: already a job of two processes
    assert gang.world_size == 2 and gang.distributed and gang.multi_node
    assert gang.values_used()["num_nodes"] == 2 and gang.values_used()["parallelism"] == "auto"
    assert spec(num_nodes=4, num_devices=8, parallelism="fsdp").world_size == 32
    assert spec(num_nodes=2, parallelism="ddp").distributed, "ddp across nodes of one device each"


def test_a_gang_joins_through_a_queue_that_only_workers_owning_enough_devices_take():
    assert gang_queue("a100", 1) == "a100.1-devices.gang"
    assert gang_queue("a100", 4) == "a100.4-devices.gang"
    assert worker_queues("a100", 2) == ["a100", "a100.2-devices", "a100.1-devices.gang", "a100.2-devices.gang"]
    assert gang_queue("a100", 4) not in worker_queues("a100", 2)


def test_fsdp_across_nodes_shards_over_the_whole_world():
    full = {"method": "full", "batch_size": 1, "max_seq_length": 2048, "parallelism": "fsdp"}
    one_node = estimate_memory(LLAMA_8B, spec(num_devices=8, **full))
    two_nodes = estimate_memory(LLAMA_8B, spec(num_nodes=2, num_devices=8, **full))
    assert two_nodes.parts["AdamW states (fp32), 1/16 shard"] == pytest.approx(
        one_node.parts["AdamW states (fp32), 1/8 shard"] / 2
    )
    assert two_nodes.total_bytes < one_node.total_bytes
