"""`python -m semiseg.report.seed_curves`: every seed's curve of chosen entries, as a figure and a table."""
from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.report.seed_curves import Curves, first_step_below, gather, main, parse_spec, smoothed, table

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "la_ssl4_cpu.json"


def test_trailing_smoothing_and_the_first_step_under_a_value() -> None:
    curve = {"step": [0, 100, 200, 300, 400], "sup": [1.2, 1.0, None, 0.8, 0.2]}
    steps, raw = smoothed(curve, "sup", 0)
    assert steps.tolist() == [0, 100, 300, 400] and raw.tolist() == pytest.approx([1.2, 1.0, 0.8, 0.2])  # None skipped
    _, means = smoothed(curve, "sup", 200)  # each step with what was logged in the 200 steps up to it, nothing after
    assert means.tolist() == pytest.approx([1.2, 1.1, 0.8, 0.5])
    assert first_step_below(curve, "sup", 200, 0.9) == 300
    assert first_step_below(curve, "sup", 200, 1.15) == 100
    assert first_step_below(curve, "sup", 200, 0.1) is None


def test_table_gives_each_run_its_dice_and_thirds_of_its_labelled_loss() -> None:
    steps = [0, 100, 200, 300, 400, 500, 600]
    method = {"entry": "m", "seed": 1, "test": {"foreground_mean": {"DSC": 0.6}},
              "curve": {"step": steps, "sup": [1.2, 1.2, 1.0, 1.0, 0.5, 0.5, 0.5], "grad_share": [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.2]}}
    supervised = {"entry": "s", "seed": 0, "test": {"foreground_mean": {"DSC": 0.7}},
                  "curve": {"step": steps, "loss": [1.0] * 3 + [0.4] * 4}}
    # MPL: `loss` is the student's pseudo-label loss; its labelled loss is `student_sup`
    mpl = {"entry": "p", "seed": 0, "curve": {"step": steps, "loss": [9.0] * 7, "student_sup": [0.5] * 7}}
    text = table([Curves("m", (method,), 600), Curves("sup", (supervised,), 600), Curves("mpl", (mpl,), 600)], 0, 0.9,
                 "python -m x")
    assert "`python -m x`" in text
    assert "| m | 1 | 0.600 | 1.2 / 1 / 0.5 (sup) | 0 / 0.1 / 0.2 | 400 |" in text
    assert "| sup | 0 | 0.700 | 1 / 0.7 / 0.4 (loss) | — | 300 |" in text  # a supervised run logs `loss`, no grad_share
    assert "| mpl | 0 | n/a | 0.5 / 0.5 / 0.5 (student_sup) | — | 0 |" in text
    with pytest.raises(ValueError, match="entry 'q' seed 0: its curve logs no labelled loss .* it logs h"):
        table([Curves("q", ({"entry": "q", "seed": 0, "curve": {"step": steps, "h": [0.0] * 7}},), 600)], 0, None, "x")


def test_spec_needs_a_file_and_an_entry() -> None:
    assert parse_spec("a/b.json:x,y") == (Path("a/b.json"), ["x", "y"])
    for bad in ("a/b.json", "a/b.json:", ":x"):
        with pytest.raises(ValueError, match="RESULTS.json:ENTRY"):
            parse_spec(bad)


def test_table_carries_the_terms_of_the_data_the_curves_come_from(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"name": "Toy", "provenance": "CC BY-NC-SA 4.0"}')
    run = {"entry": "a", "seed": 0, "curve": {"step": [0, 1], "loss": [1.0, 0.5]}}
    text = table([Curves("a", (run,), 2, str(tmp_path)), Curves("b", (run,), 2, str(tmp_path)),
                  Curves("c", (run,), 2, str(tmp_path / "gone"))], 0, None, "x")
    assert text.count("These curves come from training on Toy; derived from it, they are under its terms: CC BY-NC-SA 4.0") == 1
    assert "training on gone, whose dataset.json is not on the machine that wrote this table" in text  # never silent
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"bad/dataset.json: expected a JSON object"):
        table([Curves("d", (run,), 2, str(tmp_path / "bad"))], 0, None, "x")


@pytest.mark.skipif(not RESULTS.exists(), reason="committed LA results absent")
def test_main_writes_the_figure_and_table_from_committed_results(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(RESULTS.parents[2])
    groups = gather([f"{RESULTS}:ua-mt-scaled", f"{RESULTS}:ua-mt-scaled,lower"])
    assert [g.label for g in groups] == ["ua-mt-scaled", "lower"]  # the same entry of the same file once
    assert [r["seed"] for r in groups[0].runs] == [0, 1, 2]
    out = tmp_path / "c.png"
    assert main([f"{RESULTS}:ua-mt-scaled,lower", f"--out={out}", "--below", "0.5"]) == 0
    text = out.with_suffix(".md").read_text()
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sum(line.startswith("| ua-mt-scaled | ") for line in text.splitlines()) == 3
    assert "benchmarks/results/la_ssl4_cpu.json:ua-mt-scaled,lower" in text
    command = text.split("`")[1].split()
    assert not any(t.startswith("/") or "=/" in t for t in command), command  # no absolute path in the recorded command
    with pytest.raises(SystemExit) as err:
        main([f"{RESULTS}:no-such-entry", "--out", str(out)])
    assert err.value.code == 2
    assert f"{RESULTS}: no run of entry 'no-such-entry' with a training curve" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main([f"{RESULTS}:lower", "--out", str(tmp_path / "c.svg")])
    assert err.value.code == 2 and "must end in .png" in capsys.readouterr().err
