"""Data-parallel training: two gloo ranks on 127.0.0.1 train as one process does.

Tolerance: the ranks' gradients are summed by an all-reduce, one process sums the same terms
in another order, so float32 results differ in the last bits: after one step by at most
3e-8 (one or two units in the last place of weights of size 0.1-3), after 30 steps by at most
2e-7, as AdamW carries the differences along. Weights are compared to atol 1e-6 + rtol 1e-5
(5x that margin); the two ranks' weights, and a resumed distributed run's, exactly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.conftest import tiny_classifier_args, tiny_lm_args
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net
from training.classify import ClassifierJob
from training.distributed import Part
from training.lm import LMJob
from training.pretrain import BiLM, BiLMJob
from training.train import CheckpointMismatch, TrainConfig, fit

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("classify", "lm", "pretrain")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _job(kind: str, part: Part, cell: str = "lstm") -> Any:
    """A tiny job of each task; dropout 0, so no random draw differs between the runs."""
    rng = random.Random(7)
    torch.manual_seed(7)
    if kind == "lm":
        net = build_net(NetConfig(task="generation", vocab_size=12, cell="gru",
                                  embedding_dim=8, hidden_size=16))
        assert isinstance(net, CharLM)
        ids = torch.tensor([rng.randrange(12) for _ in range(600)])
        # 5 streams: ranks carry 2 and 3, so the shares' weights must differ to match
        return LMJob(net, ids, ids[:100], streams=5, bptt=8, seed=1, part=part)
    cfg = NetConfig(task="classification", vocab_size=20, cell=cell, embedding_dim=8,
                    hidden_size=8, bidirectional=True, num_labels=2)
    seqs = [[rng.randint(2, 19) for _ in range(rng.randint(2, 9))] for _ in range(100)]
    labels = [int(any(t < 6 for t in s)) for s in seqs]
    if kind == "classify":  # batch 7 of 100: shares 4 and 3, and a last batch of 2
        net = build_net(cfg)
        assert isinstance(net, RNNClassifier)
        return ClassifierJob(net, (seqs, labels), (seqs[:30], labels[:30]), ["no", "yes"], 7,
                             seed=1, part=part)
    encoder = build_net(cfg)
    assert isinstance(encoder, RNNClassifier)
    return BiLMJob(BiLM(encoder, [10]), (seqs, labels), (seqs[:20], labels[:20]), 7, seed=1,
                   label_weight=0.5, part=part)


def _cfg(kind: str) -> TrainConfig:
    # Gradual unfreezing and a moving average on the classifier: parameters that join late
    # and weights that are not the live ones must match too.
    extra: dict[str, Any] = {"unfreeze_every": 8, "ema": 0.9} if kind == "classify" else {}
    return TrainConfig(max_steps=30, eval_every=10, checkpoint_every=10, warmup_steps=5,
                       lr=0.01, progress=False, patience=0, **extra)


def _rank(rank: int, world: int, port: int, out: Path) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for kind in KINDS:
            job = _job(kind, Part(rank, world))
            result = fit(job, _cfg(kind), out / kind)
            torch.save({"final": job.net.state_dict(), "best": result.best_state,
                        "eval": result.best_eval, "history": result.history},
                       out / f"{kind}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three tiny jobs trained by two gloo ranks; each rank's results in a file."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank, args=(2, _free_port(), out), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_of_half_batches_match_one_process(two_ranks: Path, tmp_path: Path,
                                                     kind: str) -> None:
    job = _job(kind, Part())
    single = fit(job, _cfg(kind), tmp_path)
    ranks = [torch.load(two_ranks / f"{kind}-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in job.net.state_dict().items():
        assert torch.equal(ranks[0]["final"][key], ranks[1]["final"][key]), key
        torch.testing.assert_close(ranks[0]["final"][key], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[0]["best"][key], single.best_state[key],
                                   rtol=1e-5, atol=1e-6)
    assert ranks[0]["eval"]["step"] == single.best_eval["step"]
    # the logged loss is the global batch's, summed over the ranks' shares
    logged = [r["loss"] for r in ranks[0]["history"] if "loss" in r and "eval" not in r]
    expected = [r["loss"] for r in single.history if "loss" in r and "eval" not in r]
    assert logged == pytest.approx(expected, rel=1e-4)
    # rank 1 went by rank 0's evaluations (it evaluates nothing itself)
    assert ([r["eval"] for r in ranks[1]["history"] if "eval" in r]
            == [r["eval"] for r in ranks[0]["history"] if "eval" in r])


def test_a_checkpoint_resumes_only_with_its_world_size(two_ranks: Path) -> None:
    with pytest.raises(CheckpointMismatch, match="written by 2 process"):
        fit(_job("lm", Part()), _cfg("lm"), two_ranks / "lm", resume=True)


def _torchrun(args: list[str], port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "training", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _kill(run: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher and its ranks at once, as a lost machine would end them (torchrun
    starts each rank in a session of its own, so they are found by their parent)."""
    ranks = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
    for pid in [*map(int, ranks), run.pid]:
        os.kill(pid, signal.SIGKILL)
    run.wait()
    assert run.stdout is not None
    run.stdout.close()
    deadline = time.monotonic() + 10
    while not all(map(_dead, map(int, ranks))):  # the old rank 0 must let go of the work dir
        assert time.monotonic() < deadline, "a killed rank is still running"
        time.sleep(0.05)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_torchrun_lm_resumes_after_a_kill_and_rank_0_alone_writes(lm_file: Path,
                                                                   tmp_path: Path) -> None:
    extra = ["--checkpoint-every", "10", "--max-steps", "80", "--eval-every", "40"]
    straight = tiny_lm_args(lm_file, tmp_path / "a" / "models" / "lm") + extra
    run = _torchrun(straight, _free_port())
    output = run.communicate(timeout=240)[0].decode()
    assert run.returncode == 0, output
    assert output.count("validation loss") == 1, output  # one export, by rank 0

    out, work = tmp_path / "a" / "models" / "lm", tmp_path / "a" / "work" / "lm"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "tokenizer.json", "training.png"]
    assert sorted(p.name for p in work.iterdir()) == [".lock", "checkpoint.pt", "metrics.jsonl"]
    log = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "eval" not in r]
    assert steps == list(range(20, 81, 20))  # each record once: no second writer
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "global_batch_size": 8,
        "per_rank_batch_size": [4, 4], "batch_unit": "streams"}

    broken = tiny_lm_args(lm_file, tmp_path / "b" / "models" / "lm") + extra
    checkpoint = tmp_path / "b" / "work" / "lm" / "checkpoint.pt"
    run = _torchrun(broken, _free_port())
    deadline = time.monotonic() + 180
    while not checkpoint.exists() or torch.load(checkpoint, weights_only=True)["step"] < 30:
        assert time.monotonic() < deadline and run.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    _kill(run)
    assert not (tmp_path / "b" / "models" / "lm" / "model.safetensors").exists()
    resumed = _torchrun([*broken, "--resume"], _free_port())
    output = resumed.communicate(timeout=240)[0].decode()
    assert resumed.returncode == 0, output

    a, b = _weights(out), _weights(tmp_path / "b" / "models" / "lm")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.gpu
def test_torchrun_on_two_gpus_talks_nccl(lm_file: Path, sentiment_files: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    gpu = ["--device", "cuda", "--precision", "bf16"]
    lm, sentiment = tmp_path / "models" / "lm", tmp_path / "models" / "sentiment"
    for args in (tiny_lm_args(lm_file, lm), tiny_classifier_args(*sentiment_files, sentiment)):
        run = _torchrun(args + gpu, _free_port())
        output = run.communicate(timeout=240)[0].decode()
        assert run.returncode == 0, output
    for folder in (lm, sentiment):
        training = json.loads((folder / "config.json").read_text())["training"]
        assert training["distributed"]["backend"] == "nccl"
        assert training["distributed"]["world_size"] == 2
