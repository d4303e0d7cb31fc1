"""The recipes in runs/ and the GPU check, run as a user runs them: each script's --smoke mode end to end
on CPU (toy sizes, offline), so the GPU recipe cannot rot without CI noticing."""

import os
import re
import subprocess

import pytest
import yaml

from tests.conftest import BIN, REPO

STAGES = ["corpus", "tokenizer", "pretrain", "factory", "sft", "dpo", "evals"]


def run(*args, **env):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def check_smoke_run(proc, run_dir, evals, stages):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("pretrain", "sft", "dpo"):
        steps = [p.name for p in (run_dir / stage / "checkpoints").iterdir()]
        assert steps, f"{stage} saved no checkpoint"
        assert (run_dir / stage / "metrics.jsonl").stat().st_size > 0
    assert sorted(p.stem for p in (run_dir / "evals").glob("*.json")) == sorted(evals)
    assert "<html" in (run_dir / "report.html").read_text()[:500].lower()
    table = (run_dir / "stages.md").read_text()
    assert re.findall(r"^\| (\w+) \| \d+m \d\ds \|", table, re.M) == stages + ["total"]
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if re.match(r"== \w+: \d+m", line)] == \
        [f"== {s}" for s in stages]  # each stage printed its time as it ended


def test_speedrun_smoke_runs_every_stage_end_to_end(tmp_path):
    home = tmp_path / "home"
    proc = run("runs/speedrun.sh", "--smoke", NANOCODE_HOME=str(home))
    run_dir = home / "runs" / "speedrun-smoke"
    check_smoke_run(proc, run_dir, ["bpb", "copy", "core", "preference", "soul", "agentic"], STAGES + ["core", "report"])
    # the factory ran against a model server (the scripted one) on the Hub seed sources
    assert "openai:scripted" in proc.stdout
    assert all(name in proc.stdout for name in ("evol-codealpaca", "self-oss-instruct", "smoltalk"))


def test_cpu_smoke_runs_every_stage_end_to_end(tmp_path):
    home = tmp_path / "home"
    proc = run("runs/cpu.sh", NANOCODE_HOME=str(home), SMOKE="1")
    run_dir = home / "runs" / "cpu-smoke"
    check_smoke_run(proc, run_dir, ["bpb", "copy", "preference", "soul", "agentic"], STAGES + ["report"])
    assert (run_dir / "tokenizer-prose" / "tokenizer.json").exists()
    # as if stopped after the factory (SFT's and DPO's checkpoints on disk, not written down as finished):
    # --resume skips what stages.tsv lists and continues the training stages from their checkpoints
    tsv = run_dir / "stages.tsv"
    finished = tsv.read_text().splitlines()
    tsv.write_text("".join(line + "\n" for line in finished[:4]))  # corpus, tokenizer, pretrain, factory
    sft_steps = sorted(p.name for p in (run_dir / "sft" / "checkpoints").iterdir())
    proc = run("runs/cpu.sh", "--resume", NANOCODE_HOME=str(home), SMOKE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    skipped = [line.split(":")[0][3:] for line in proc.stdout.splitlines() if line.endswith("skipped")]
    assert skipped == STAGES[:4]
    assert "resuming at step" in proc.stdout and sorted(p.name for p in (run_dir / "sft" / "checkpoints").iterdir()) == sft_steps
    assert [line.split("\t")[0] for line in tsv.read_text().splitlines()] == STAGES + ["report"]


def test_a_run_never_overwrites_an_earlier_one_and_bad_arguments_say_so(tmp_path):
    home = tmp_path / "home"
    (home / "runs" / "cpu" / "pretrain").mkdir(parents=True)
    proc = run("runs/cpu.sh", NANOCODE_HOME=str(home))
    assert proc.returncode == 2 and proc.stdout.strip().startswith(f"error: {home}/runs/cpu exists")
    assert [p.name for p in (home / "runs" / "cpu").iterdir()] == ["pretrain"]
    proc = run("runs/speedrun.sh", "d99", NANOCODE_HOME=str(home))
    assert (proc.returncode, proc.stdout.strip()) == (2, "error: unknown argument d99 (use d12, d20, d24, --smoke or --resume)")


def test_the_smoke_factory_config_is_the_hub_config_with_fixture_datasets():
    def load(name):
        return yaml.safe_load((REPO / "factory" / "configs" / name).read_text())

    real, smoke = load("hub.yaml"), load("hub-smoke.yaml")
    hub = [s for s in smoke["source"]["sources"] if "dataset" in s]
    assert {s["name"] for s in hub} == {"evol_codealpaca", "self_oss_instruct", "tulu_personas_code", "smoltalk"}
    assert all((REPO / s["dataset"]).is_dir() and s["dataset"].startswith("tests/fixtures/") for s in hub)
    for config in (real, smoke):  # the one difference: where each Hub source reads, and how much
        for source in config["source"]["sources"]:
            source.pop("dataset", None), source.pop("limit", None)
    assert smoke == real
    assert real["backend"]["name"] == "openai" and real["generator"]["name"] == "llm"


def test_the_gpu_check_fits_its_eight_minutes():
    proc = run("bench/gpu.sh", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    limits = [int(s) for s in re.findall(r"^\w+ +\((\d+)s\)", proc.stdout, re.M)]
    assert len(limits) == 4 and sum(limits) <= 8 * 60 - 20  # 20 s for the install and start-up
    assert "--depth 12" in proc.stdout and "--depth 20" in proc.stdout and "--batches 1,8,32,128" in proc.stdout
    assert proc.stdout.count("--dtype bfloat16 --attention cudnn") == 2


@pytest.mark.slow
def test_the_gpu_check_at_toy_size_on_cpu_fills_its_table(tmp_path):
    proc = run("bench/gpu.sh", "--tiny", OUT=str(tmp_path), PYTHON=str(BIN / "python"),
               TESTS="tests/test_model.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "gpu.md").read_text()
    assert re.search(r"^\| tests \| .* \d+ passed", table, re.M)
    assert len(re.findall(r"^\| pretrain step \| d\d, .* \| [\d,]+ \| [\d.]+% \|", table, re.M)) == 2
    assert len(re.findall(r"^\| decode \| batch \d+ \| [\d,]+ \|", table, re.M)) == 2
