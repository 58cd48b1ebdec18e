"""Hypothesis: what must hold for every bundle, not just the ones we thought of.

- build -> verify round trip on random trees, split into random chunks;
- chunk boundaries never change the outcome or the files;
- any truncation, any appended byte and any flipped bit of a valid bundle never verifies,
  and the pipeline never raises anything but `OtaError`.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota import OtaError
from ota.build import bundle_bytes
from tests.ota.craft import KEY_A, KEY_B, NOW, PRODUCT, check_bytes, root, split

component = st.text(
    st.characters(
        codec="utf-8",
        categories=["L", "N", "P", "S", "Zs"],
        exclude_characters="/\\",
        max_codepoint=0x2FF,
    ),
    min_size=1,
    max_size=12,
).filter(lambda name: name not in (".", ".."))
paths = st.lists(component, min_size=1, max_size=3).map("/".join)


@st.composite
def trees(draw) -> dict[str, tuple[bytes, int]]:
    chosen = draw(st.lists(paths, min_size=1, max_size=8, unique=True))
    tree: dict[str, tuple[bytes, int]] = {}
    for path in chosen:
        # a file cannot also be a directory of another file
        if any(other.startswith(path + "/") or path.startswith(other + "/") for other in tree):
            continue
        data = draw(st.binary(max_size=300))
        tree[path] = (data, draw(st.sampled_from([0o100644, 0o100755])))
    return tree


def build(tree: dict[str, tuple[bytes, int]], keys=(KEY_A,)) -> bytes:
    return bundle_bytes(
        tree,
        product=PRODUCT,
        version="2.0.0",
        keys=list(keys),
        hardware=["board-a"],
        created=NOW - 10,
        expires=NOW + 1000,
    )


cuts = st.lists(st.integers(0, 4000), max_size=6)


@given(trees(), cuts)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_build_then_verify_gives_back_the_tree(tree, points) -> None:
    bundle = build(tree)
    manifest, files = check_bytes(split(bundle, points))
    assert files == {path: data for path, (data, _) in tree.items()}
    assert {item.path: item.mode for item in manifest.files} == {
        path: mode for path, (_, mode) in tree.items()
    }
    assert all(item.sha256 == hashlib.sha256(files[item.path]).digest() for item in manifest.files)


@given(trees(), cuts, cuts)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_chunk_boundaries_do_not_matter(tree, first, second) -> None:
    bundle = build(tree, keys=(KEY_A, KEY_B))
    two_keys = root(KEY_A, KEY_B, threshold=2)
    assert check_bytes(split(bundle, first), two_keys) == check_bytes(
        split(bundle, second), two_keys
    )


def outcome(chunks) -> str:
    try:
        check_bytes(chunks)
    except OtaError as exc:
        return str(exc.code)
    return "verified"


@st.composite
def damaged(draw):
    """A valid bundle and a damaged copy of it: truncated, extended, or bits flipped."""
    bundle = build(draw(trees()))
    how = draw(st.sampled_from(["truncate", "append", "flip"]))
    if how == "truncate":
        return bundle[: draw(st.integers(0, len(bundle) - 1))]
    if how == "append":
        return bundle + draw(st.binary(min_size=1, max_size=40))
    data = bytearray(bundle)
    bit = st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7))
    for position, shift in draw(st.lists(bit, min_size=1, max_size=4, unique=True)):
        data[position] ^= 1 << shift  # distinct bits: two flips never cancel out
    return bytes(data)


@given(damaged(), cuts)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
def test_a_damaged_bundle_never_verifies_and_only_ever_raises_ota_error(data, points) -> None:
    # Anything other than OtaError escaping check_bytes fails the test by itself.
    assert outcome(split(data, points)) != "verified"


@given(st.binary(max_size=600), cuts)
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_random_bytes_only_ever_raise_ota_error(data, points) -> None:
    assert outcome(split(data, points)) != "verified"
