"""The ``discover`` command line: working commands and one-line errors for bad input."""

import shutil

import pytest
from typer.testing import CliRunner

from discovery.cli import app
from evaluators import behaviour
from evaluators.tasks import TASKS

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, list(args), env=env)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,fragment", [
    (["datasets", "build", "--task", "humanoid"], "unknown task 'humanoid'"),
    (["datasets", "build", "--variant", "dirty"], "unknown dataset variant"),
    (["datasets", "build", "--variant", "noisy:0.7"], "outside [0, 0.5]"),
    (["datasets", "build", "--segment-length", "-5"], "--segment-length"),
    (["datasets", "build", "--pairs", "0"], "--pairs"),
    (["datasets", "show", "--variant", "stoch:abc"], "must be a number"),
    (["policies", "show", "--task", "nope"], "unknown task"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(args, fragment, tmp_path):
    assert_one_line_error(run(*args, "--cache-dir", str(tmp_path)) if args[0] == "datasets" else run(*args),
                          fragment)


def test_unwritable_cache_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run("datasets", "build", "--cache-dir", str(blocker / "sub")), "cannot create cache")


def test_missing_and_damaged_checkpoint(tmp_path):
    env = {"MPO_DISCOVER_POLICIES": str(tmp_path / "policies")}
    result = run("datasets", "build", "--task", "hopper", "--pairs", "4", "--cache-dir", str(tmp_path / "c"), env=env)
    assert_one_line_error(result, "no behaviour policies for hopper")
    shutil.copytree(behaviour.policy_dir(TASKS["hopper"]), tmp_path / "policies" / "hopper")
    (tmp_path / "policies" / "hopper" / "expert.safetensors").write_bytes(b"\x00" * 10)
    result = run("datasets", "build", "--task", "hopper", "--pairs", "4", "--cache-dir", str(tmp_path / "c"), env=env)
    assert_one_line_error(result, "damaged")
    assert not list((tmp_path / "c").glob("*.safetensors")), "no half-written dataset"


def test_datasets_build_and_show(tmp_path):
    args = ["--task", "hopper", "--variant", "noisy:0.1", "--pairs", "16", "--segment-length", "10",
            "--cache-dir", str(tmp_path)]
    built = run("datasets", "build", *args)
    assert built.exit_code == 0, built.output
    assert "sha256" in built.output
    png = tmp_path / "hist.png"
    shown = run("datasets", "show", *args, "--plot", str(png))
    assert shown.exit_code == 0, shown.output
    assert "label agreement" in shown.output and png.stat().st_size > 1000


def test_policies_show():
    result = run("policies", "show", "--task", "hopper")
    assert result.exit_code == 0, result.output
    assert "expert" in result.output and "R_expert" in result.output


def _exported_function(source: str, name: str):
    namespace = {}
    exec(compile(source, "<export>", "exec"), namespace)  # our own exporter's output, not model text
    return namespace[name]


def test_export_a_zoo_objective_as_torch_and_run_it(tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed")
    out = tmp_path / "dpo_loss.py"
    result = run("export", "dpo", "--format", "torch", "--out", str(out))
    assert result.exit_code == 0, result.output
    source = out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo_loss.py"], "nothing else is left beside it"
    assert "import torch" in source and "discovery" not in source and "grammar" not in source
    fn = _exported_function(source, "loss")
    logp_w = torch.tensor([-10.0, -5.0], dtype=torch.float64, requires_grad=True)
    loss = fn(logp_w, torch.tensor([-12.0, -4.0], dtype=torch.float64), torch.tensor([-11.0, -6.0], dtype=torch.float64),
              torch.tensor([-11.0, -6.0], dtype=torch.float64), torch.tensor([5.0, 5.0]), torch.tensor([5.0, 5.0]), 0.5)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and (logp_w.grad < 0).all(), "DPO pushes the chosen log-likelihood up"


def test_export_an_expression_and_an_archive_entry(tmp_path):
    from archive.store import ArchiveStore
    from grammar.zoo import baseline

    result = run("export", "softplus(-(logp_w - ref_w - logp_l + ref_l))", "--format", "latex")
    assert result.exit_code == 0, result.output
    assert "\\log" in result.output or "softplus" in result.output
    path = tmp_path / "archive.db"
    with ArchiveStore(str(path)) as store:
        run_id = store.create_run({}, 0, "test")
        cid = store.add_candidate(run_id, objective=baseline("ipo").replace(name="found"), origin="gp:point",
                                  generation=1, status="evaluated", fitness=50.0, ci95=1.0,
                                  descriptors={"complexity": 1.0})
    result = run("export", f"#{cid}", "--format", "sympy", "--archive", str(path))
    assert result.exit_code == 0, result.output
    assert "found" in result.output or "beta" in result.output


@pytest.mark.parametrize("args,fragment", [
    (["export", "dpo", "--format", "onnx"], "unknown export format"),
    (["export", "#99", "--archive", "/nonexistent/archive.db"], "no archive"),
])
def test_export_errors_are_one_line(args, fragment):
    assert_one_line_error(run(*args), fragment)


def test_export_refuses_code_in_an_expression():
    result = run("export", "__import__('os').system('true')")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: only plain function names can be called")


@pytest.mark.parametrize("command", [["run"], ["bench"], ["archive", "list"], ["export"], []])
def test_help_shows_no_value_type_after_plain_flags(command):
    result = run(*command, "--help", env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "--help" in result.output


def test_run_defaults_are_the_search_config_defaults():
    import inspect

    from discovery.cli import _search_config, run
    from discovery.search import SearchConfig

    wanted = inspect.signature(_search_config).parameters
    given = {name: p.default.default for name, p in inspect.signature(run).parameters.items() if name in wanted}
    assert _search_config(**given) == SearchConfig()


def test_baseline_all_means_the_whole_zoo():
    from discovery.cli import _baselines
    from evaluators.suite import REPORTED_LOSSES

    assert _baselines(None) == REPORTED_LOSSES and _baselines(["all"]) == () and _baselines(["dpo"]) == ("dpo",)
