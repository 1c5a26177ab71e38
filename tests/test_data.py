"""ssvae.data: reading IDX files, the train/valid/test split, and verified fetching
(docs/original.md 1.1)."""

import functools
import gzip
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from ssvae import data
from ssvae.data import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# Sanity facts from shared/data/mnist/README.md and docs/original.md 1.1.
TRAIN_CLASS_COUNTS = [4932, 5678, 4968, 5101, 4859, 4506, 4951, 5175, 4842, 4988]
TRAIN_Y_100_TO_110 = [5, 7, 1, 7, 1, 1, 6, 3, 0, 2]
VALID_Y_100_TO_110 = [7, 0, 9, 1, 6, 2, 8, 3, 6, 4]


def gz_name(name: str) -> str:
    return f"{name}.gz"


def idx_header(*shape: int) -> bytes:
    """Magic number for unsigned bytes with len(shape) dimensions, then the big-endian sizes."""
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)


def write_gz(path: Path, content: bytes) -> Path:
    path.write_bytes(gzip.compress(content))
    return path


def flip_crc(gz: bytes) -> bytes:
    """Invert the CRC32 in the gzip trailer: the data still decodes but fails the CRC check."""
    crc_start = len(gz) - 8
    return gz[:crc_start] + bytes(b ^ 0xFF for b in gz[crc_start : crc_start + 4]) + gz[-4:]


def change_last_label(gz: bytes) -> bytes:
    """A well-formed gzip of same-sized, plausible content: only the checksum can tell."""
    content = bytearray(gzip.decompress(gz))
    content[-1] = (content[-1] + 1) % 10
    return gzip.compress(bytes(content))


def first_half(gz: bytes) -> bytes:
    return gz[: len(gz) // 2]


def recompress(gz: bytes) -> bytes:
    """The same content gzipped differently: still valid, but with different bytes."""
    return gzip.compress(gzip.decompress(gz), compresslevel=1, mtime=0)


def place_copy(mnist_dir: Path, name: str, target_dir: Path, damage=None) -> Path:
    """Copy `<name>.gz` into `target_dir`, passing its bytes through `damage` if given."""
    payload = (mnist_dir / gz_name(name)).read_bytes()
    target = target_dir / gz_name(name)
    target.write_bytes(damage(payload) if damage else payload)
    return target


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 at a port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def assert_fetch_fails(name: str, sources: list[str], dest_dir: Path, cause: str, **kwargs) -> None:
    """fetch_file raises a one-line DataError naming the file, the cause and every source tried,
    in order, and leaves nothing at all in `dest_dir` (no final file, no temporary file)."""
    with pytest.raises(DataError) as raised:
        data.fetch_file(name, sources, dest_dir, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    assert gz_name(name) in message
    assert cause in message
    positions = [message.find(source) for source in sources]
    assert -1 not in positions, f"a source is missing from: {message}"
    assert positions == sorted(positions)
    assert list(dest_dir.iterdir()) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_source(tmp_path: Path):
    """(served directory, its URL) of a throw-away HTTP server; the directory starts empty."""
    served_dir = tmp_path / "served"
    served_dir.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval keeps shutdown() in teardown quick.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield served_dir, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def dest_dir(tmp_path: Path) -> Path:
    return tmp_path / "dest"


# read_idx


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        (TRAIN_IMAGES, (60_000, 28, 28)),
        (TRAIN_LABELS, (60_000,)),
        (TEST_IMAGES, (10_000, 28, 28)),
        (TEST_LABELS, (10_000,)),
    ],
)
def test_read_idx_gives_declared_shape_as_uint8(mnist_dir: Path, name: str, shape: tuple) -> None:
    array = data.read_idx(mnist_dir / gz_name(name))
    assert array.shape == shape
    assert array.dtype == np.uint8
    assert array.max() == (255 if len(shape) == 3 else 9)


def test_read_idx_reads_a_small_file_exactly(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "small.gz", idx_header(2, 3) + bytes(range(6)))
    np.testing.assert_array_equal(data.read_idx(path), [[0, 1, 2], [3, 4, 5]])


def test_read_idx_rejects_bad_magic_number(tmp_path: Path) -> None:
    # Consistent apart from the dtype code (0x0D, float32), so only the magic check can reject it.
    path = write_gz(
        tmp_path / "floats.gz", bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + bytes(4)
    )
    with pytest.raises(DataError, match="floats.gz"):
        data.read_idx(path)


def test_read_idx_rejects_body_shorter_than_header_declares(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "short.gz", idx_header(3, 2) + bytes(5))
    with pytest.raises(DataError, match="short.gz"):
        data.read_idx(path)


@pytest.mark.parametrize(
    "content",
    [idx_header(60_000, 28, 28)[:8], idx_header(60_000, 28, 28)[:10]],
    ids=["ends-after-first-dimension", "ends-inside-second-dimension"],
)
def test_read_idx_rejects_truncated_header(tmp_path: Path, content: bytes) -> None:
    path = write_gz(tmp_path / "header.gz", content)
    with pytest.raises(DataError, match="header.gz"):
        data.read_idx(path)


# prepare


def test_prepare_gives_the_split_sizes_and_dtypes(prepared_mnist: Path) -> None:
    arrays = data.load(prepared_mnist)
    expected_sizes = {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert sorted(arrays) == sorted(f"{split}_{part}" for split in expected_sizes for part in "xy")
    for split, size in expected_sizes.items():
        assert arrays[f"{split}_x"].shape == (size, 784)
        assert arrays[f"{split}_x"].dtype == np.uint8
        assert arrays[f"{split}_y"].shape == (size,)


def test_prepare_matches_the_known_label_facts(prepared_mnist: Path) -> None:
    arrays = data.load(prepared_mnist)
    assert np.bincount(arrays["train_y"], minlength=10).tolist() == TRAIN_CLASS_COUNTS
    assert arrays["train_y"][100:110].tolist() == TRAIN_Y_100_TO_110
    assert arrays["valid_y"][100:110].tolist() == VALID_Y_100_TO_110


def test_prepare_takes_valid_from_the_end_of_the_training_file(
    prepared_mnist: Path, mnist_dir: Path
) -> None:
    arrays = data.load(prepared_mnist)
    training_images = data.read_idx(mnist_dir / gz_name(TRAIN_IMAGES)).reshape(60_000, 784)
    training_labels = data.read_idx(mnist_dir / gz_name(TRAIN_LABELS))
    np.testing.assert_array_equal(arrays["train_x"], training_images[:50_000])
    np.testing.assert_array_equal(arrays["valid_x"], training_images[-10_000:])
    np.testing.assert_array_equal(arrays["valid_y"], training_labels[-10_000:])
    test_images = data.read_idx(mnist_dir / gz_name(TEST_IMAGES)).reshape(10_000, 784)
    np.testing.assert_array_equal(arrays["test_x"], test_images)


def test_prepare_rejects_a_corrupted_file_and_writes_nothing(
    mnist_dir: Path, tmp_path: Path
) -> None:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name in data.MNIST_FILES:
        place_copy(mnist_dir, name, raw_dir, change_last_label if name == TRAIN_LABELS else None)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(DataError) as raised:
        data.prepare(raw_dir, out_dir / "mnist.npz")
    message = str(raised.value)
    assert "\n" not in message
    assert gz_name(TRAIN_LABELS) in message
    assert "checksum mismatch" in message
    assert list(out_dir.iterdir()) == []


def test_prepare_writes_the_named_output_whatever_its_suffix(
    mnist_dir: Path, tmp_path: Path
) -> None:
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name in data.MNIST_FILES:
        place_copy(mnist_dir, name, raw_dir)
    out_path = tmp_path / "out" / "mnist.data"
    data.prepare(raw_dir, out_path)
    assert list(out_path.parent.iterdir()) == [out_path]
    assert out_path.stat().st_size > 0


# fetching


def test_fetch_all_over_http_gives_verified_copies(
    http_source: tuple[Path, str], mnist_dir: Path, dest_dir: Path
) -> None:
    served_dir, url = http_source
    for name in data.MNIST_FILES:
        place_copy(mnist_dir, name, served_dir)
    paths = data.fetch_all([url], dest_dir)
    assert paths == [dest_dir / gz_name(name) for name in data.MNIST_FILES]
    assert sorted(dest_dir.iterdir()) == sorted(paths)
    for path in paths:
        assert path.read_bytes() == (mnist_dir / path.name).read_bytes()


@pytest.mark.parametrize(
    ("damage", "cause"),
    [
        (flip_crc, "corrupt gzip"),
        (change_last_label, "checksum mismatch"),
        (first_half, "truncated gzip"),
    ],
    ids=["corrupt-gzip", "wrong-content", "truncated"],
)
def test_fetch_rejects_a_damaged_download(
    http_source: tuple[Path, str], mnist_dir: Path, dest_dir: Path, damage, cause: str
) -> None:
    served_dir, url = http_source
    place_copy(mnist_dir, TRAIN_LABELS, served_dir, damage)
    assert_fetch_fails(TRAIN_LABELS, [url], dest_dir, cause)


def test_fetch_reports_an_unreachable_source(dest_dir: Path) -> None:
    url = closed_port_url()
    assert_fetch_fails(TEST_LABELS, [url], dest_dir, "unreachable", retries=2, backoff=0.01)


def test_fetch_reports_http_404(http_source: tuple[Path, str], dest_dir: Path) -> None:
    _, url = http_source
    assert_fetch_fails(TEST_LABELS, [url], dest_dir, "HTTP 404")


def test_fetch_reports_a_missing_local_directory(tmp_path: Path, dest_dir: Path) -> None:
    missing = str(tmp_path / "no-such-dir")
    assert_fetch_fails(TEST_LABELS, [missing], dest_dir, "no such file")


def test_fetch_error_names_every_failed_source_in_order(
    http_source: tuple[Path, str], tmp_path: Path, dest_dir: Path
) -> None:
    _, url = http_source
    sources = [url, closed_port_url(), str(tmp_path / "no-such-dir")]
    assert_fetch_fails(TEST_LABELS, sources, dest_dir, "HTTP 404", retries=1)


def test_fetch_falls_back_past_a_corrupt_source(
    http_source: tuple[Path, str], mnist_dir: Path, dest_dir: Path
) -> None:
    served_dir, url = http_source
    place_copy(mnist_dir, TRAIN_LABELS, served_dir, change_last_label)
    path = data.fetch_file(TRAIN_LABELS, [url, str(mnist_dir)], dest_dir)
    assert path == dest_dir / gz_name(TRAIN_LABELS)
    assert list(dest_dir.iterdir()) == [path]
    assert path.read_bytes() == (mnist_dir / gz_name(TRAIN_LABELS)).read_bytes()


def test_fetch_takes_the_first_source_that_verifies(
    http_source: tuple[Path, str], mnist_dir: Path, dest_dir: Path
) -> None:
    # Both sources are valid but their gzip bytes differ, so the result shows which one was used.
    served_dir, url = http_source
    served = place_copy(mnist_dir, TRAIN_LABELS, served_dir, recompress)
    assert served.read_bytes() != (mnist_dir / gz_name(TRAIN_LABELS)).read_bytes()
    path = data.fetch_file(TRAIN_LABELS, [url, str(mnist_dir)], dest_dir)
    assert path.read_bytes() == served.read_bytes()


def test_fetch_cli_reports_a_bad_source_in_one_line(
    run_console_script, tmp_path: Path, dest_dir: Path
) -> None:
    missing = str(tmp_path / "no-such-dir")
    finished = run_console_script("ssvae-fetch-mnist", missing, "--dest", str(dest_dir))
    assert finished.returncode != 0
    error_lines = finished.stderr.splitlines()
    assert len(error_lines) == 1, finished.stderr
    assert error_lines[0].startswith("ssvae-fetch-mnist: error:")
    assert missing in error_lines[0]
    assert not dest_dir.exists() or list(dest_dir.iterdir()) == []


def test_fetch_refuses_fewer_than_one_attempt(mnist_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retries"):
        data.fetch_file(TRAIN_LABELS, [str(mnist_dir)], tmp_path, retries=0)


def test_read_idx_reports_a_file_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="plain.gz"):
        data.read_idx(path)


def test_fetch_keeps_a_verified_file_without_asking_any_source(
    mnist_dir: Path, tmp_path: Path, dest_dir: Path
) -> None:
    data.fetch_file(TEST_LABELS, [str(mnist_dir)], dest_dir)
    kept = dest_dir / gz_name(TEST_LABELS)
    before = kept.stat().st_mtime_ns
    # Offline now, and the source list changed: the verified copy stays as it is.
    assert data.fetch_file(TEST_LABELS, [str(tmp_path / "no-such-dir")], dest_dir) == kept
    assert kept.stat().st_mtime_ns == before


def test_fetch_replaces_a_truncated_file_left_under_its_final_name(
    mnist_dir: Path, dest_dir: Path
) -> None:
    dest_dir.mkdir(parents=True, exist_ok=True)
    original = (mnist_dir / gz_name(TEST_LABELS)).read_bytes()
    (dest_dir / gz_name(TEST_LABELS)).write_bytes(first_half(original))
    path = data.fetch_file(TEST_LABELS, [str(mnist_dir)], dest_dir)
    assert path.read_bytes() == original


def test_fetch_failure_says_mnist_sources_can_name_a_local_copy(dest_dir: Path) -> None:
    with pytest.raises(DataError, match=r"point mnist_sources at a directory"):
        data.fetch_file(TEST_LABELS, [closed_port_url()], dest_dir, retries=1)
