"""CLI: `raft-diffusion scorers` and `raft-diffusion score DIR --scorer NAME` on a folder of PNGs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import scorers
from raft_diffusion.cli import main
from scorers import testing
from scorers.jpeg import jpeg_size_kb


@pytest.fixture()
def png_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, noise in enumerate([0.0, 0.3, 1.0]):
        arr = (128 + noise * rng.uniform(-127, 127, size=(32, 32, 3))).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def test_scorers_lists_every_name_once(capsys):
    assert main(["scorers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == scorers.available()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


def test_score_jpeg_table_and_csv(png_dir, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["score", str(png_dir), "--scorer", "jpeg-compressibility", "--prompt", "a cat",
                 "--csv", str(out), "--scorer-arg", "quality=95"]) == 0
    printed = capsys.readouterr().out
    assert "img0.png" in printed and "reward" in printed and "mean" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(r["prompt"] == "a cat" for r in rows)
    rewards = [float(r["reward"]) for r in rows]
    assert rewards[0] > rewards[1] > rewards[2]  # noisier images compress worse
    import torch

    x = torch.stack([torch.from_numpy(np.asarray(Image.open(png_dir / f"img{i}.png"), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for i in range(3)])
    np.testing.assert_allclose(rewards, (-jpeg_size_kb(x)).tolist(), rtol=1e-5)


def test_score_with_prompts_file_and_aesthetic_args(png_dir, tmp_path, capsys):
    ckpt = testing.save_tiny_open_clip(tmp_path / "tiny.pt")
    head = testing.save_head(tmp_path / "head.safetensors", "mlp", embed_dim=16, hidden=(8, 8, 4, 4))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\nc\n")
    out = tmp_path / "aes.csv"
    code = main(["score", str(png_dir), "--scorer", "aesthetic-v2", "--prompts", str(prompts), "--csv", str(out),
                 "--scorer-arg", f"weights={head}", "--scorer-arg", f"backbone=open_clip:{testing.TINY_OPEN_CLIP}:{ckpt}",
                 "--scorer-arg", "device=cpu", "--scorer-arg", "batch_size=2"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["prompt"] for r in rows] == ["a", "b", "c"]
    assert all(np.isfinite(float(r["reward"])) for r in rows)


def test_score_errors_are_one_line_exit_2(png_dir, tmp_path, capsys):
    bad = tmp_path / "two.txt"
    bad.write_text("a\nb\n")
    assert main(["score", str(png_dir), "--scorer", "jpeg-compressibility", "--prompts", str(bad)]) == 2
    assert "2 prompts for 3 images" in capsys.readouterr().err
    assert main(["score", str(png_dir), "--scorer", "no-such"]) == 2
    assert "known scorers" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nowhere"), "--scorer", "jpeg-compressibility"]) == 2
