"""python -m medgrounder.tables: each paper table runs the real Hydra multirun and is assembled
from the runs' metrics.json beside the paper's numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medgrounder.tables import TABLES, assemble, collect, main, run_table

ROOT = Path(__file__).parents[1]

EXPERIMENTS = {p.stem for p in (ROOT / "conf/experiment").glob("*.yaml")}


def test_every_paper_table_names_existing_experiments():
    assert set(TABLES) == {*(f"litegpt_table{i}" for i in range(1, 7)), *(f"pfmvg_table{i}" for i in range(1, 5))}
    for name, table in TABLES.items():
        assert set(table.experiments) <= EXPERIMENTS, name
        for row in table.paper.values():
            assert len(row) == len(table.columns), name


def test_dry_run_prints_the_multirun(capsys):
    cmd = run_table("litegpt_table3", ["--dry-run", "--scale", "tiny", "--sweep-dir", "out", "--", "seed=1"])
    assert "-m medgrounder.train -m +experiment=litegpt_minigptv2,litegpt_biomedclip,litegpt_pubmedclip,litegpt_dual" in cmd
    assert cmd.endswith("hydra.sweep.dir=out scale=tiny seed=1")


def test_assemble_puts_each_run_beside_the_paper():
    runs = {"pfmvg_stage2_only": {"mscxr_refer": {"iou/mean": 0.25, "iou/weighted": 0.3125, "iou/Edema": 0.5}}}
    text = assemble(TABLES["pfmvg_table3"], runs)
    lines = text.splitlines()
    assert "| stage 2 only (paper) | 0.418 | 0.159 | 0.345 | 0.419 | 0.409 | 0.607 | 0.24 | 0.256 | 0.357 | 0.374 |" in lines
    assert "| stage 2 only (this run, clean) | - | - | - | - | 0.500 | - | - | - | 0.250 | 0.312 |" in lines
    assert not any("papers' protocol" in line for line in lines)  # the run has no paper/ keys
    assert any(line.startswith("| no fine-tuning (this run) | not run") for line in lines)


def test_assemble_prints_the_papers_protocol_beside_the_paper_and_the_clean_figure_after():
    runs = {"litegpt_dual": {"vindr_identify": {"acc@0.3": 0.1, "acc@0.4": 0.05, "acc@0.5": 0.02,
                                                "paper/acc@0.3": 0.125, "paper/acc@0.4": 0.0625, "paper/acc@0.5": 0.03125}}}
    lines = assemble(TABLES["litegpt_table3"], runs).splitlines()
    at = lines.index("| BiomedCLIP + PubMedCLIP - Llama 2 (paper) | 12.54 | 10.5 | 8.12 |")
    assert lines[at + 1] == "| BiomedCLIP + PubMedCLIP - Llama 2 (this run, papers' protocol) | 12.50 | 6.25 | 3.12 |"
    assert lines[at + 2] == "| BiomedCLIP + PubMedCLIP - Llama 2 (this run, clean) | 10.00 | 5.00 | 2.00 |"


@pytest.mark.slow
def test_ablation_script_runs_the_sweep_and_builds_the_table(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "medgrounder.tables", "pfmvg_table3", "--scale", "tiny", "--sweep-dir", str(sweep),
           "--only", "pfmvg_zero_shot", "pfmvg_stage2_only", "--",
           # ++: keys the base config (the demo, which Hydra composes first for the sweep) lacks
           f"paths.data_dir={tmp_path}/data", "data.synth.n=24", "++data.synth.min_side=96", "++data.synth.max_side=128",
           "data.num_workers=0", "data.decode_workers=1", "++stages.refer.max_epochs=1", "tower_pretraining.steps=2",
           "model.max_new_tokens=8", "++stages.refer.max_new_tokens=8", "check_generation_budgets=false", "~logger.wandb", "trainer.enable_progress_bar=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = collect(sweep)
    assert set(runs) == {"pfmvg_zero_shot", "pfmvg_stage2_only"}
    for name, metrics in runs.items():
        job = next(p.parent for p in sweep.glob("*/metrics.json") if json.loads(p.read_text()) == metrics)
        assert (job / "checkpoints" / "refer.pt").is_file(), name
    table = (sweep / "pfmvg_table3.md").read_text()
    assert table in done.stdout
    row = next(line for line in table.splitlines() if line.startswith("| no fine-tuning (this run, papers' protocol)"))
    assert row.split(" | ")[-1].rstrip(" |") == f"{runs['pfmvg_zero_shot']['mscxr_refer']['iou/weighted']:.3f}"
    assert "| Ours (stage 1 + stage 2) (this run) | not run" in table


def test_the_command_lists_the_tables_and_refuses_an_unknown_one(capsys):
    main(["--list"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in TABLES)
    with pytest.raises(SystemExit, match="unknown table 'pfmvg_table9'"):
        main(["pfmvg_table9"])
