"""mile-preprocess on output it cannot write and on input it cannot use: one line
``mile-preprocess: error: <path>: <reason>``, exit 1, no file left behind.

The read-only and full file systems are real: a tmpfs mounted read-only or 64 KiB small (root),
else a directory without write permission (not root; the full-disk case is then skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NULL = ["--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--quiet"]


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), *args],
                          capture_output=True, text=True, timeout=120)


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, f), directory)
                  for root, _, files in os.walk(directory) for f in files)


def one_error_line(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mile-preprocess: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(["7"] * 5000)}) + "\n" for _ in range(20)))
    return str(src)


def _mount_tmpfs(path, options):
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path):
    path = tmp_path / "ro"
    mounted = _mount_tmpfs(path, "ro,size=64k")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a read-only tmpfs here")
        path.chmod(0o555)
    yield path
    if mounted:
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    path = tmp_path / "full"
    if not _mount_tmpfs(path, "size=64k"):
        pytest.skip("needs root to mount a 64 KiB tmpfs")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_read_only_output_directory(source, read_only_dir):
    line = one_error_line(cli("--input", source, "--output-prefix", str(read_only_dir / "p"), *NULL),
                          str(read_only_dir))
    assert any(r in line for r in ("Read-only file system", "Permission denied"))
    assert files_under(read_only_dir) == []


def test_full_disk(source, full_dir):
    # 20 documents x 5000 tokens x 2 bytes = 200 KB of tokens: more than the 64 KiB file system.
    one_error_line(cli("--input", source, "--output-prefix", str(full_dir / "p"), *NULL),
                   str(full_dir), "No space left on device")
    assert files_under(full_dir) == []


def test_output_prefix_under_a_regular_file(source, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_error_line(cli("--input", source, "--output-prefix", str(tmp_path / "afile" / "sub" / "p"), *NULL),
                   str(tmp_path / "afile"), "Not a directory")
    assert files_under(tmp_path) == ["afile", "in.jsonl"]


@pytest.mark.parametrize("flags, needle", [
    (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "{bad}"], "not a sentencepiece model"),
    (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{bad}"], "not a Hugging Face tokenizer.json"),
    (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "{bad}", "--merge-file", "{bad}"],
     "not a GPT-2 vocab.json"),
])
def test_tokenizer_file_that_is_not_a_model(source, tmp_path, flags, needle):
    bad = tmp_path / "tokenizer.bin"
    bad.write_text("this is not a tokenizer\n")
    flags = [f.format(bad=bad) for f in flags]
    one_error_line(cli("--input", source, "--output-prefix", str(tmp_path / "o" / "p"), *flags),
                   f"{bad}: {needle}")
    assert not (tmp_path / "o").exists() or files_under(tmp_path / "o") == []


def test_lone_surrogate_and_json_null_are_named(tmp_path):
    src = tmp_path / "odd.jsonl"
    src.write_text('{"text": "1 2"}\n{"text": "3 \\ud800 4"}\n{"text": null}\n')
    one_error_line(cli("--input", str(src), "--output-prefix", str(tmp_path / "p"), *NULL),
                   f"{src}:2", "lone surrogate", "'\\ud800'")
    src.write_text('{"text": "1 2"}\n{"text": null}\n')
    line = one_error_line(cli("--input", str(src), "--output-prefix", str(tmp_path / "p"), *NULL),
                          f"{src}:2", "JSON null")
    assert "NoneType" not in line
    assert files_under(tmp_path) == ["odd.jsonl"]
    # Skipped and counted under --skip-bad-lines, the good documents kept.
    src.write_text('{"text": "1 2"}\n{"text": "3 \\ud800 4"}\n{"text": null}\n{"text": "5"}\n')
    assert cli("--input", str(src), "--output-prefix", str(tmp_path / "p"), *NULL,
               "--skip-bad-lines").returncode == 0
    totals = json.load(open(tmp_path / "mile-manifests" / "p.json"))["totals"]
    assert totals["documents"] == 2 and totals["bad_lines"] == {"invalid_unicode": 1, "not_a_string": 1}


def test_no_documents_is_an_error_unless_allowed(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text('\n{"text": ""}\n  \n')
    one_error_line(cli("--input", str(src), "--output-prefix", str(tmp_path / "p"), *NULL),
                   f"no documents in {src}")
    assert files_under(tmp_path) == ["empty.jsonl"]
    assert cli("--input", str(src), "--output-prefix", str(tmp_path / "p"), *NULL, "--allow-empty").returncode == 0
    manifest = json.load(open(tmp_path / "mile-manifests" / "p.json"))
    assert manifest["datasets"] == [] and manifest["totals"]["empty_documents"] == 1
