"""`raft-diffusion score` on bad folders: one line naming the value and the fix, exit 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raft_diffusion.cli import main


@pytest.fixture()
def folder(tmp_path):
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:04d}.png")
    return tmp_path


def run(capsys, *argv):
    code = main(["score", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_truncated_and_non_image_png_name_the_file(folder, capsys):
    data = (folder / "0000.png").read_bytes()
    (folder / "0002.png").write_bytes(data[: len(data) // 2])
    code, err = run(capsys, folder, "--scorer", "jpeg-compressibility")
    assert code == 2 and len(err) == 1 and "cannot read image" in err[0] and "0002.png" in err[0]
    (folder / "0002.png").write_text("not a png")
    code, err = run(capsys, folder, "--scorer", "jpeg-compressibility")
    assert code == 2 and "0002.png" in err[0] and "remove or replace it" in err[0]


def test_batch_size_zero_is_refused(folder, capsys):
    assert run(capsys, folder, "--scorer", "jpeg-compressibility", "--batch-size", "0") == (
        2, ["raft-diffusion: error: score: --batch-size must be >= 1, got 0"])


def test_a_prompt_reading_scorer_without_prompts_is_refused(folder, capsys):
    code, err = run(capsys, folder, "--scorer", "miniworld-clip")
    assert code == 2 and "reads the prompt and no prompt was given" in err[0]
    assert not list(folder.glob("scores-*.csv")), "nothing written"


def test_a_generate_folder_reads_prompts_by_file(folder, capsys):
    (folder / "prompts.txt").write_text("0000.png\ta red circle\t11\n0001.png\ta blue square\t12\n")
    assert main(["score", str(folder), "--scorer", "jpeg-compressibility"]) == 0
    rows = (folder / "scores-jpeg-compressibility.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["0000.png", "a red circle"], ["0001.png", "a blue square"]]
