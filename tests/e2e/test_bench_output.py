"""``ehf bench`` writes under the working directory (``./runs/bench/<time>``, or ``--out``), never into the
source tree."""

from __future__ import annotations

from pathlib import Path

from lightning_ehf import bench, cli

REPO = Path(__file__).resolve().parents[2]


def test_bench_writes_under_the_working_directory(tmp_path, monkeypatch, capsys):
    for name in ("bench_training", "bench_eval", "bench_memory", "bench_scaling"):  # measured elsewhere
        monkeypatch.setattr(bench, name, lambda *args, **kwargs: {})
    monkeypatch.setattr(bench, "to_markdown", lambda res: "# bench\n")
    monkeypatch.chdir(tmp_path)
    res = bench.run(quick=True)
    out = Path(res["out"])
    assert out.parent == tmp_path / "runs" / "bench" and (out / "bench.json").is_file() and (out / "bench.md").is_file()
    assert not (REPO / "runs" / "bench" / out.name).exists()

    # through the command: the same default, and --out
    assert cli.main(["bench", "--quick", "--out", "mine"]) == 0
    assert (tmp_path / "mine" / "bench.json").is_file()
    assert "written: mine/bench.json" in capsys.readouterr().out
