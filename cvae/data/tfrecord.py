"""Read BAIR's original TFRecords (``softmotion30_44k``) without TensorFlow, and convert them.

A TFRecord file is a sequence of records: uint64 length, uint32 masked CRC32C of the length,
the payload, uint32 masked CRC32C of the payload. Each payload is a ``tf.train.Example``
protobuf, decoded here by a ~40-line wire-format reader. Images are stored either as raw
64x64x3 bytes (as BAIR does, despite the key name ``encoded``) or as an encoded PNG/JPEG;
both are handled.
"""
from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import crc32c as _crc32c
import numpy as np
from PIL import Image

from ..condition import ACTION_DIM, POSITION_DIM
from ..errors import DataError
from .bair import IMAGE_SIZE, write_sequence

Feature = list  # a list of bytes, floats or ints


def masked_crc(data: bytes) -> int:
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str | Path) -> Iterator[bytes]:
    """Payloads of a TFRecord file, checking both CRCs; a bad one names the file and record."""
    path = Path(path)
    with open(path, "rb") as f:
        n = 0
        while header := f.read(12):
            if len(header) < 12:
                raise DataError(f"{path}: record {n} is truncated (header)")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                raise DataError(f"{path}: record {n} has a corrupt length (CRC mismatch)")
            payload = f.read(length)
            footer = f.read(4)
            if len(payload) < length or len(footer) < 4:
                raise DataError(f"{path}: record {n} is truncated")
            if masked_crc(payload) != struct.unpack("<I", footer)[0]:
                raise DataError(f"{path}: record {n} has corrupt data (CRC mismatch)")
            yield payload
            n += 1


def write_records(path: str | Path, payloads: list[bytes]) -> None:
    with open(path, "wb") as f:
        for p in payloads:
            length = struct.pack("<Q", len(p))
            f.write(length + struct.pack("<I", masked_crc(length)) + p + struct.pack("<I", masked_crc(p)))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, value


def parse_example(payload: bytes) -> dict[str, Feature]:
    """A ``tf.train.Example`` as {key: list of bytes | floats | ints}."""
    out: dict[str, Feature] = {}
    for num, _, features in _fields(payload):
        if num != 1:
            continue
        for _, _, entry in _fields(features):
            key, value = "", b""
            for n, _, v in _fields(entry):
                key, value = (v.decode(), value) if n == 1 else (key, v)
            for kind, _, lst in _fields(value):
                items: Feature = []
                for _, wire, v in _fields(lst):
                    if kind == 1:
                        items.append(bytes(v))
                    elif kind == 2:
                        items.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
                    elif wire == 2:  # packed int64 varints
                        j = 0
                        while j < len(v):
                            x, j = _varint(v, j)
                            items.append(x - (1 << 64) if x >= 1 << 63 else x)
                    else:
                        items.append(v - (1 << 64) if v >= 1 << 63 else v)
                out[key] = items
    return out


def _enc_varint(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _len_field(num: int, data: bytes) -> bytes:
    return _enc_varint(num << 3 | 2) + _enc_varint(len(data)) + data


def encode_example(features: dict[str, list[bytes] | np.ndarray]) -> bytes:
    """Serialize {key: bytes list (BytesList) | float array (FloatList)} as a tf.train.Example."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, np.ndarray):
            inner = _len_field(1, np.asarray(value, "<f4").tobytes())
            feature = _len_field(2, inner)
        else:
            feature = _len_field(1, b"".join(_len_field(1, v) for v in value))
        entries += _len_field(1, _len_field(1, key.encode()) + _len_field(2, feature))
    return _len_field(1, entries)


def decode_image(data: bytes, where: str) -> np.ndarray:
    if len(data) == IMAGE_SIZE * IMAGE_SIZE * 3:
        return np.frombuffer(data, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB") if img.mode in ("RGBA", "RGB") else img
    except OSError as e:
        raise DataError(f"{where}: neither raw 64x64x3 bytes nor a decodable image ({e})") from None
    if img.mode != "RGB" or img.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{where}: image is {img.mode} {img.size[0]}x{img.size[1]}, expected RGB 64x64")
    return np.asarray(img)


def example_to_sequence(ex: dict[str, Feature], camera: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = sorted({int(k.split("/")[0]) for k in ex if k.split("/")[0].isdigit()})
    if not steps:
        raise DataError(f"{where}: no per-step keys like '0/action'")
    key = f"image_{camera}" if camera == "main" else "image_aux1"
    frames, actions, positions = [], [], []
    for t in steps:
        for k in (f"{t}/{key}/encoded", f"{t}/action", f"{t}/endeffector_pos"):
            if k not in ex:
                raise DataError(f"{where}: key {k!r} is missing")
        frames.append(decode_image(ex[f"{t}/{key}/encoded"][0], f"{where}, key {t}/{key}/encoded"))
        actions.append(ex[f"{t}/action"])
        positions.append(ex[f"{t}/endeffector_pos"])
    actions_a, positions_a = np.asarray(actions, np.float32), np.asarray(positions, np.float32)
    if actions_a.shape[1:] != (ACTION_DIM,) or positions_a.shape[1:] != (POSITION_DIM,):
        raise DataError(f"{where}: actions are {actions_a.shape}, positions {positions_a.shape}; "
                        f"expected [T,{ACTION_DIM}], [T,{POSITION_DIM}]")
    return np.stack(frames), actions_a, positions_a


def convert(src: str | Path, out: str | Path, camera: str = "aux1") -> dict[str, int]:
    """``src/{train,test}/*.tfrecords`` -> ``out/<split>/<file name>/<n>/`` (the lab's layout)."""
    src, out = Path(src), Path(out)
    counts: dict[str, int] = {}
    for split in ("train", "validate", "test"):
        files = sorted((src / split).glob("*.tfrecords"),
                       key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])
        for file in files:
            for n, payload in enumerate(read_records(file)):
                where = f"{file}, record {n}"
                frames, actions, positions = example_to_sequence(parse_example(payload), camera, where)
                write_sequence(out / split / file.name / str(n), frames, actions, positions)
                counts[split] = counts.get(split, 0) + 1
    if not counts:
        raise DataError(f"{src}: no *.tfrecords under {src}/train or {src}/test")
    return counts
