"""Module.load() of a file it did not write: checked from the headers before any data is read."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest

from gradrs import nn


def model_and_file(tmp_path):
    model = nn.MLP(2, [2, 1])
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def add_entry(path, name, header, data=b"", repeat=1, version=(1, 0)):
    """Appends a compressed member ``name`` with a .npy ``header`` and ``data * repeat`` after it."""
    write = {(1, 0): np.lib.format.write_array_header_1_0, (2, 0): np.lib.format.write_array_header_2_0}
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            write[version](member, header)
            for _ in range(repeat):
                member.write(data)


def test_a_huge_declared_shape_fails_fast_without_reading_the_data(tmp_path, monkeypatch):
    model, path = model_and_file(tmp_path)
    name = model.named_parameters()[0][0]
    with zipfile.ZipFile(path) as archive:
        kept = {n: archive.read(n) for n in archive.namelist() if n != f"{name}.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in kept.items():
            archive.writestr(n, data)
    # 10**9 float64s declared; 64 MB of zeros follow, a few tens of kB on disk.
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9,)}
    add_entry(path, f"{name}.npy", header, bytes(1 << 20), repeat=64)
    assert path.stat().st_size < 1 << 20
    before = model.state_dict()
    read = []
    unpatched = zipfile.ZipExtFile.read

    def counted(self, n=-1):
        data = unpatched(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    t0 = time.perf_counter()
    with pytest.raises(
        ValueError, match=rf"entry '{name}' .* has shape \(1000000000,\); a parameter is a scalar"
    ):
        model.load(path)
    assert time.perf_counter() - t0 < 2.0
    assert sum(read) < 1 << 20  # decompressed: the headers, not the 64 MB
    assert model.state_dict() == before


@pytest.mark.parametrize(
    "header,message",
    [
        ({"descr": "<i8", "fortran_order": False, "shape": ()}, "has dtype int64; a parameter is a float"),
        ({"descr": "|O", "fortran_order": False, "shape": ()}, "has dtype object; a parameter is a float"),
        ({"descr": "<c16", "fortran_order": False, "shape": ()}, "has dtype complex128"),
        ({"descr": "<f8", "fortran_order": False, "shape": (2,)}, r"has shape \(2,\)"),
        ({"descr": "<f8", "fortran_order": False, "shape": (1, 1)}, r"has shape \(1, 1\)"),
    ],
    ids=["int", "object (a pickle)", "complex", "vector", "matrix"],
)
def test_entries_of_the_wrong_kind_are_refused_by_name(tmp_path, header, message):
    model = nn.MLP(2, [1])
    path = tmp_path / "model.npz"
    np.savez(path, **{name: np.float64(0.5) for name, _ in model.named_parameters()[1:]})
    name = model.named_parameters()[0][0]
    add_entry(path, f"{name}.npy", header, bytes(16))
    before = model.state_dict()
    with pytest.raises(ValueError, match=rf"entry '{name}' of .*{message}"):
        model.load(path)
    with pytest.raises(ValueError, match=message):
        model.load(path, strict=False)
    assert model.state_dict() == before


def test_a_version_2_header_and_float32_load(tmp_path):
    model = nn.MLP(2, [1])
    path = tmp_path / "model.npz"
    names = [name for name, _ in model.named_parameters()]
    np.savez(path, **{name: np.float64(0.25) for name in names[1:]})
    add_entry(
        path,
        f"{names[0]}.npy",
        {"descr": "<f4", "fortran_order": False, "shape": ()},
        np.float32(1.5).tobytes(),
        version=(2, 0),
    )
    model.load(path)
    assert [p.data for p in model.parameters()] == [1.5, 0.25, 0.25]


def test_unexpected_and_truncated_entries(tmp_path):
    model, path = model_and_file(tmp_path)
    add_entry(path, "extra.npy", {"descr": "<f8", "fortran_order": False, "shape": (10**9,)}, bytes(8))
    with pytest.raises(ValueError, match="unexpected entry 'extra.npy'"):
        model.load(path)
    model.load(path, strict=False)  # skipped unread, whatever it declares
    (tmp_path / "second").mkdir()
    _, other = model_and_file(tmp_path / "second")
    with zipfile.ZipFile(other, "a") as archive:
        archive.writestr("notes.txt", b"hello")
    with pytest.raises(ValueError, match="unexpected entry 'notes.txt'"):
        model.load(other)
    model.load(other, strict=False)
    short = tmp_path / "short.npz"
    np.savez(short, **{name: np.float64(1.0) for name, _ in model.named_parameters()[1:]})
    add_entry(
        short, f"{model.named_parameters()[0][0]}.npy", {"descr": "<f8", "fortran_order": False, "shape": ()}
    )
    with pytest.raises(ValueError, match="is not a readable array"):
        model.load(short)
    garbled = tmp_path / "garbled.npz"
    with zipfile.ZipFile(garbled, "w") as archive:
        archive.writestr(f"{model.named_parameters()[0][0]}.npy", b"\x93NUMPY\x01\x00\xff\xff{")
    with pytest.raises(ValueError, match="is not a readable array"):
        model.load(garbled, strict=False)


def test_a_npy_file_a_directory_and_other_files_get_clear_messages(tmp_path):
    model = nn.MLP(2, [1])
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(
        ValueError, match=r"one.npy is a .npy file \(one array\); load\(\) reads the .npz file"
    ):
        model.load(tmp_path / "one.npy")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match="dir.npz is a directory"):
        model.load(tmp_path / "dir.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz is not a .npz file"):
        model.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        model.load(tmp_path / "missing")


def test_a_corrupt_member_is_a_value_error_naming_it(tmp_path):
    model = nn.MLP(2, [1])
    path = tmp_path / "model.npz"
    model.save(path)
    name = model.named_parameters()[0][0]
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 20 : start + 28] = b"\xff" * 8  # inside the header: the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"entry '{name}' of .*(cannot be read|not a readable array)"):
        model.load(path)
