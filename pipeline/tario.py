"""A minimal streaming tar reader. Python's tarfile costs ~50 us per member (it builds a
TarInfo with every field); a shard of small images has four members per sample, so that
alone capped MNIST reading at ~5k samples/s per core. This reads only what a shard reader
needs (name, size, type) from the 512-byte headers: ustar, GNU long names and pax paths."""
BLOCK = 512
# A member (or long-name record) larger than this ends the shard with a ValueError: a header
# declaring 1 TiB made read() ask for it at once (MemoryError). An 8192 x 8192 image, the
# readers' pixel limit, stays below it as PNG.
MAX_MEMBER = 256 * 2**20
CHUNK = 2**20               # reads beyond this go in pieces, never one allocation of `size`


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":                      # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _read(stream, n: int) -> bytes:
    data = stream.read(n) if n <= CHUNK else _read_chunked(stream, n)
    if len(data) != n:
        raise EOFError(f"tar cut off: wanted {n} bytes, got {len(data)}")
    return data


def _read_chunked(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(min(CHUNK, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _pax_path(data: bytes) -> str | None:
    for rec in data.decode("utf-8", "replace").split("\n"):
        _, _, kv = rec.partition(" ")
        k, _, v = kv.partition("=")
        if k == "path":
            return v
    return None


def iter_tar(stream, want=None):
    """Yield (name, data) for every regular file in a tar stream. `want(name) -> bool`: the
    members it refuses are not read: a seekable stream (a local file) seeks past them, so an
    epoch over a subset reads what it uses; any other is read through. Raises EOFError when
    the stream ends inside a member, ValueError on a header that is not tar."""
    long_name = None
    seek = want is not None and _seekable(stream)
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK or header == b"\0" * BLOCK:
            if header and header.strip(b"\0"):
                raise EOFError("tar cut off inside a header")
            return
        size, kind = _checked(header)
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in (b"L", b"x"):                  # the next member's long name
            body = _read(stream, padded)[:size]
            long_name = body.rstrip(b"\0").decode() if kind == b"L" else _pax_path(body)
            continue
        name = long_name if long_name is not None else _header_name(header)
        long_name = None
        regular = kind in (b"0", b"\0", b"7")
        if not regular or (want is not None and not want(name)):
            _pass(stream, padded, seek)
            continue
        yield name, _read(stream, padded)[:size]


def _checked(header: bytes) -> tuple[int, bytes]:
    """(size, type) of a 512-byte header whose checksum holds and whose size is allowed."""
    if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
        raise ValueError("bad tar header checksum")
    size = _octal(header[124:136])
    if size > MAX_MEMBER:
        name = header[:100].rstrip(b"\0").decode("utf-8", "replace")
        raise ValueError(f"tar member {name!r} declares {size} bytes, above the {MAX_MEMBER >> 20} MiB limit")
    return size, header[156:157]


def _header_name(header: bytes) -> str:
    name = header[:100].rstrip(b"\0").decode()
    prefix = header[345:500].rstrip(b"\0").decode() if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _seekable(stream) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _pass(stream, n: int, seek: bool) -> None:
    """Skip n bytes of member data. A seek past the end of a cut-off file is not an error
    (the next header read finds the end); the shard's sample count says it was short."""
    if seek:
        stream.seek(n, 1)
    else:
        _read(stream, n)


# ---- reading chosen members through DALI's index (the .idx beside every shard) ----
# An epoch over a few samples of a big shard: seeking past the others still reads every
# member header (4 members a sample: 2 KB a sample, more than a small JPEG); the index says
# where each member's data is, so only the chosen samples' bytes are read (docs/architecture.md
# section 4). The index is parsed and checked by pipeline/shardset.py (parse_index, strict).

def iter_indexed(stream, samples):
    """(name, data) of the given index entries (shardset.Index.samples: per sample, members as
    (ext, data offset, size, name)), in order, each member's own header read and
    checked against the index (name, size, checksum): a tar rewritten beside an old index
    raises ValueError instead of giving another sample's bytes."""
    for members in samples:
        for _, offset, size, name in members:
            stream.seek(offset - BLOCK)
            header = stream.read(BLOCK)
            if len(header) < BLOCK:
                raise EOFError("tar cut off inside a header")
            found = _header_name(header)
            if _checked(header)[0] != size or (found != name and not (len(name) > 99 and name.startswith(found))):
                raise ValueError(f"the shard's .idx does not match its tar at {name!r} (found {found!r}): "
                                 "rewrite the index (make_shards writes both)")
            data = _read(stream, size)
            if len(data) < size:
                raise EOFError(f"tar cut off inside member {name!r}")
            yield name, data
