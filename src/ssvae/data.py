"""MNIST: fetch the four IDX files, verify them, convert them to the original's split
(docs/original.md 1.1).

Sources are tried in order. A source is an HTTP(S) URL prefix, a ``file://`` URL or a local
directory holding ``<name>.gz``. A file is accepted only if the sha256 of its *decompressed*
content matches, and it reaches its final name only after that check (write to a temporary file,
then rename), so a failed or interrupted fetch never leaves something that looks like valid data.
"""

import gzip
import hashlib
import io
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ssvae.cli import entry_point_parser
from ssvae.errors import UserError, exit_on_user_error
from ssvae.io import DamagedFile, OutputError, atomic_output, write_atomic

# Decompressed size and sha256 of each file (../shared/data/mnist/README.md).
MNIST_FILES = {
    "train-images-idx3-ubyte": (
        47040016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        60008,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        7840016,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        10008,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
N_TRAIN = 50_000  # the first 50,000 training images; the last 10,000 are the validation split
IDX_DTYPE_UBYTE = 0x08
PREPARED_ARRAYS = ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")
ARRAYS_FORMAT = 2  # 2: the file records the sha256 of the arrays' content


class DataError(UserError):
    """Bad or unobtainable input data; the message is one line naming the file and the cause."""


def _check_decompressed(path: Path, name: str) -> None:
    """Raise DataError unless the gzip file at `path` decompresses to the expected MNIST file."""
    size, sha256 = MNIST_FILES[name]
    digest = hashlib.sha256()
    n_bytes = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                n_bytes += len(chunk)
    except EOFError as err:
        raise DataError("truncated gzip") from err
    except (OSError, zlib.error) as err:
        raise DataError(f"corrupt gzip ({err})") from err
    if n_bytes != size or digest.hexdigest() != sha256:
        raise DataError(
            f"checksum mismatch ({n_bytes} bytes, sha256 {digest.hexdigest()[:12]}...; "
            f"expected {size} bytes, sha256 {sha256[:12]}...)"
        )


def _copy_from_source(source: str, filename: str, dest, timeout: float) -> None:
    """Copy `filename` from one source into the open binary file `dest`."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        url = source.rstrip("/") + "/" + filename
        with urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, dest)
        return
    directory = Path(
        urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else source
    )
    with open(directory / filename, "rb") as src:
        shutil.copyfileobj(src, dest)


def _is_transient(err: Exception) -> bool:
    """Network errors worth retrying; a 4xx answer or a missing local file is not."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500
    return isinstance(err, (urllib.error.URLError, TimeoutError, ConnectionError))


def fetch_file(
    name: str,
    sources: list[str],
    dest_dir: Path,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
) -> Path:
    """`<name>.gz` in `dest_dir`: kept if it is already a verified copy, otherwise fetched from
    the first source that gives one (a truncated or corrupt file there is replaced)."""
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    filename = name + ".gz"
    final = dest_dir / filename
    if final.is_file():
        try:
            _check_decompressed(final, name)
            return final
        except DataError:
            pass  # fetched again below; the bad copy is replaced only by a verified one
    failures = []
    for source in sources:
        for attempt in range(1, retries + 1):
            try:
                with atomic_output(final) as tmp:
                    with open(tmp, "wb") as dest:
                        _copy_from_source(source, filename, dest, timeout)
                    _check_decompressed(tmp, name)
                return final
            except OutputError:
                raise  # not the source's fault: no other source can help
            except DataError as err:
                failures.append(f"{source}: {err}")
                break
            except (
                Exception
            ) as err:  # any failure of one source is reported, then the next is tried
                if _is_transient(err) and attempt < retries:
                    time.sleep(backoff * 2 ** (attempt - 1))
                    continue
                failures.append(f"{source}: {_describe(err)}")
                break
    if not failures:
        raise DataError(f"could not obtain {filename}: no sources given")
    raise DataError(
        f"could not obtain a valid {filename} (tried {'; '.join(failures)}); without internet, "
        "point mnist_sources at a directory holding the four MNIST .gz files, e.g. "
        "--config mnist_sources='[/path/to/mnist]'"
    )


def _describe(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable ({err.reason})"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    return f"{type(err).__name__}: {err}"


def fetch_all(sources: list[str], dest_dir: Path, **kwargs) -> list[Path]:
    return [fetch_file(name, sources, dest_dir, **kwargs) for name in MNIST_FILES]


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes into an array of its declared shape."""
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path.name}: unreadable gzip ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_DTYPE_UBYTE:
        raise DataError(f"{path.name}: not an IDX file of unsigned bytes")
    header_end = 4 + 4 * raw[3]
    if len(raw) < header_end:
        raise DataError(f"{path.name}: IDX header is truncated")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header_end], dtype=">u4"))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path.name}: header declares shape {shape} but holds {data.size} bytes")
    return data.reshape(shape)


def prepare(raw_dir: Path, out_path: Path) -> None:
    """Verify the four files in `raw_dir` and write the train/valid/test arrays to `out_path`."""
    arrays = {}
    for name in MNIST_FILES:
        path = raw_dir / (name + ".gz")
        if not path.exists():
            raise DataError(f"{path}: missing")
        try:
            _check_decompressed(path, name)
        except DataError as err:
            raise DataError(f"{path}: {err}") from err
        arrays[name] = read_idx(path)
    train_x = arrays["train-images-idx3-ubyte"].reshape(-1, 28 * 28)
    train_y = arrays["train-labels-idx1-ubyte"]
    split = {
        "train_x": train_x[:N_TRAIN],
        "train_y": train_y[:N_TRAIN],
        "valid_x": train_x[N_TRAIN:],
        "valid_y": train_y[N_TRAIN:],
        "test_x": arrays["t10k-images-idx3-ubyte"].reshape(-1, 28 * 28),
        "test_y": arrays["t10k-labels-idx1-ubyte"],
    }
    write_arrays(out_path, split)


def write_arrays(out_path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write prepared arrays with the digest of their content, atomically."""
    buffer = io.BytesIO()
    # through a stream: savez appends ".npz" to a bare name
    np.savez(buffer, **arrays, sha256=np.array(content_digest(arrays)))
    write_atomic(out_path, buffer.getvalue())


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over each prepared array's name, dtype, shape and bytes, in a fixed order."""
    digest = hashlib.sha256()
    for key in PREPARED_ARRAYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key} {array.dtype.str} {array.shape}\n".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def load(path: Path) -> dict[str, np.ndarray]:
    """The prepared arrays: images as uint8 (N, 784), labels as int64 (N,)."""
    return load_verified(path)[0]


def load_verified(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """The prepared arrays and their digest, checked against the one recorded when they were
    written. A file missing, truncated, without one of the arrays or damaged is a DataError
    naming it."""
    try:
        with np.load(path) as arrays:
            stored = {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz of prepared MNIST ({err})") from None
    missing = [key for key in PREPARED_ARRAYS if key not in stored]
    if missing:
        raise DataError(f"{path}: no array {missing[0]!r}; not prepared MNIST")
    if "sha256" not in stored:
        raise DamagedFile(path, "no recorded digest: prepared by an earlier ssvae; delete it")
    digest = content_digest(stored)
    if str(stored["sha256"]) != digest:
        raise DamagedFile(path, "its content does not match its recorded digest; delete it")
    loaded = {
        key: stored[key].astype(np.int64) if key.endswith("_y") else stored[key]
        for key in PREPARED_ARRAYS
    }
    return loaded, digest


def fetch_main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-fetch-mnist",
        "Fetch the four MNIST IDX files from the first source with a verified copy; a file "
        "already verified in --dest is kept.",
    )
    parser.add_argument("sources", nargs="+", help="URL prefix, file:// URL or local directory")
    parser.add_argument("--dest", type=Path, required=True, help="directory for the .gz files")
    parser.add_argument("--retries", type=int, default=3, help="attempts per network source")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per network request")
    args = parser.parse_args(argv)
    if args.retries < 1:
        parser.error(f"--retries must be at least 1, got {args.retries}")
    with exit_on_user_error("ssvae-fetch-mnist"):
        for path in fetch_all(args.sources, args.dest, retries=args.retries, timeout=args.timeout):
            print(f"verified {path}")


def prepare_main(argv: list[str] | None = None) -> None:
    parser = entry_point_parser(
        "ssvae-prepare-mnist", "Convert the MNIST IDX files to one .npz with the original's split."
    )
    parser.add_argument(
        "--raw-dir", type=Path, required=True, help="directory holding the four verified .gz files"
    )
    parser.add_argument("--out", type=Path, required=True, help=".npz to write")
    args = parser.parse_args(argv)
    with exit_on_user_error("ssvae-prepare-mnist"):
        prepare(args.raw_dir, args.out)
    print(f"wrote {args.out}")
