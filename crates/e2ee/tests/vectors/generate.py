#!/usr/bin/env python3
"""Independent implementation of docs/PROTOCOL.md (aparte e2ee, version 1) that
writes the test vectors in v1.json next to this file.

Written from the specification alone, without reading the Rust implementation.
Deterministic: every "random" input is SHA-256 of a fixed ASCII string, so running

    python3 crates/e2ee/tests/vectors/generate.py

regenerates a byte-identical v1.json. Dependencies: Python 3.11 standard library
and the `cryptography` package (X25519, HKDF-Expand, ChaCha20-Poly1305).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# ---------------------------------------------------------------------------
# Constants (§1, §2, §4, §5)
# ---------------------------------------------------------------------------

SUITE = 0xF0A1
VERSION = 0x01

MSG_COMMIT = 1
MSG_RESPONSE = 2
MSG_REVEAL = 3
MSG_CONFIRM = 4

LABEL_COMMIT = b"aparte/v1 commit"
LABEL_TRANSCRIPT = b"aparte/v1 transcript"
LABEL_KEY_CONFIRMATION = b"aparte/v1 key confirmation"
LABEL_MEDIA_I2R = b"aparte/v1 media i2r"
LABEL_MEDIA_R2I = b"aparte/v1 media r2i"
LABEL_DATA_I2R = b"aparte/v1 data i2r"
LABEL_DATA_R2I = b"aparte/v1 data r2i"
LABEL_CONFIRM_I = b"aparte/v1 confirm i"
LABEL_CONFIRM_R = b"aparte/v1 confirm r"
LABEL_SAS = b"aparte/v1 sas"
LABEL_FRAME_KEY = b"aparte/v1 frame key"
LABEL_FRAME_SALT = b"aparte/v1 frame salt"
LABEL_NEXT_CHAIN = b"aparte/v1 next chain"

TAG_LEN = 16
MAX_PAYLOAD = 16_384
MAX_FRAME = 16_417

# §5 word list, index 0..63.
SAS_WORDS = (
    "anchor apple badger bamboo basket bishop button cactus "
    "camel candle canyon cobra copper dolphin donkey eagle "
    "engine falcon forest garden ginger hammer harbor helmet "
    "igloo island jacket jungle kettle koala lemon lizard "
    "magnet marble meadow nectar noodle ocean orange oyster "
    "panda pepper pillow pirate puzzle quartz rabbit rocket "
    "saddle salmon silver spider tiger tomato tunnel velvet "
    "violin walnut window winter yellow yogurt zebra zipper"
).split()
assert len(SAS_WORDS) == 64 and len(set(SAS_WORDS)) == 64
assert SAS_WORDS[0] == "anchor" and SAS_WORDS[13] == "dolphin"
assert SAS_WORDS[45] == "quartz" and SAS_WORDS[63] == "zipper"
# §5 claims no word is a prefix of another.
assert not any(a != b and b.startswith(a) for a in SAS_WORDS for b in SAS_WORDS)

# §2 message lengths.
LEN_COMMIT = 36
LEN_RESPONSE = (37, 69)   # without / with S_r
LEN_REVEAL = (69, 101)    # without / with S_i
LEN_CONFIRM = 36
MAX_MESSAGE = 101

# §7 overhead table: (counter lo, counter hi, header bytes, overhead bytes).
OVERHEAD_TABLE = (
    (0, 7, 1, 17),
    (8, 255, 2, 18),
    (256, 65_535, 3, 19),
    (65_536, 2**24 - 1, 4, 20),
    (2**24, 2**32 - 1, 5, 21),
)

# ---------------------------------------------------------------------------
# Primitives (notation paragraph)
# ---------------------------------------------------------------------------


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def u16(x: int) -> bytes:
    assert 0 <= x <= 0xFFFF
    return x.to_bytes(2, "big")


def lp(x: bytes) -> bytes:
    return u16(len(x)) + x


def opt(k: bytes | None) -> bytes:
    if k is None:
        return b"\x00"
    assert len(k) == 32
    return b"\x01" + k


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM)
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def x25519_public(secret: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def dh(secret: bytes, public: bytes) -> bytes:
    out = X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )
    # §3: each X25519 output must be contributory (not all zeros).
    # (`cryptography` itself already raises on an all-zero result.)
    assert out != bytes(32), "non-contributory DH"
    return out


# Sanity checks of the primitives against their RFCs.
def _primitive_self_tests() -> None:
    # RFC 7748 §6.1
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    A = x25519_public(a)
    B = x25519_public(b)
    assert A.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert B.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    k = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert dh(a, B).hex() == k and dh(b, A).hex() == k
    # RFC 5869 test case 1
    prk = hkdf_extract(bytes(range(13)), b"\x0b" * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = hkdf_expand(prk, bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        "34007208d5b887185865"
    )


# ---------------------------------------------------------------------------
# §2 Handshake messages
# ---------------------------------------------------------------------------


def msg_header(msg_type: int) -> bytes:
    return bytes([msg_type, VERSION]) + u16(SUITE)


def encode_commit(commitment: bytes) -> bytes:
    assert len(commitment) == 32
    return msg_header(MSG_COMMIT) + commitment


def encode_response(E_r: bytes, S_r: bytes | None) -> bytes:
    assert len(E_r) == 32
    return msg_header(MSG_RESPONSE) + E_r + opt(S_r)


def encode_reveal(E_i: bytes, S_i: bytes | None, mac_i: bytes) -> bytes:
    assert len(E_i) == 32 and len(mac_i) == 32
    return msg_header(MSG_REVEAL) + E_i + opt(S_i) + mac_i


def encode_confirm(mac_r: bytes) -> bytes:
    assert len(mac_r) == 32
    return msg_header(MSG_CONFIRM) + mac_r


def decode_message(msg: bytes) -> tuple[int, dict]:
    """Strict parser (§2), used only for self-checks."""
    if len(msg) < 4 or len(msg) > MAX_MESSAGE:
        raise ValueError("malformed")
    t, v, s = msg[0], msg[1], int.from_bytes(msg[2:4], "big")
    if t not in (1, 2, 3, 4):
        raise ValueError("malformed")
    if v != VERSION:
        raise ValueError("unsupported version")
    if s != SUITE:
        raise ValueError("unsupported suite")
    body = msg[4:]
    if t in (MSG_COMMIT, MSG_CONFIRM):
        if len(body) != 32:
            raise ValueError("malformed")
        return t, {"commitment" if t == MSG_COMMIT else "mac_r": body}
    # Response / Reveal: key (32), id_flag (1), [identity (32)], [mac_i (32)]
    if len(body) < 33:
        raise ValueError("malformed")
    key, flag = body[:32], body[32]
    if flag not in (0, 1):
        raise ValueError("malformed")
    rest = body[33:]
    ident = None
    if flag == 1:
        if len(rest) < 32:
            raise ValueError("malformed")
        ident, rest = rest[:32], rest[32:]
    if t == MSG_RESPONSE:
        if rest:
            raise ValueError("malformed")
        return t, {"E_r": key, "S_r": ident}
    if len(rest) != 32:
        raise ValueError("malformed")
    return t, {"E_i": key, "S_i": ident, "mac_i": rest}


# ---------------------------------------------------------------------------
# §3 / §4 Handshake computations and key schedule
# ---------------------------------------------------------------------------


def commitment_of(E_i: bytes, S_i: bytes | None) -> bytes:
    return H(LABEL_COMMIT + E_i + opt(S_i))


def transcript_hash(room_id, fp_i, fp_r, commitment, E_i, S_i, E_r, S_r) -> bytes:
    return H(
        LABEL_TRANSCRIPT
        + u16(SUITE)
        + lp(room_id)
        + lp(fp_i)
        + lp(fp_r)
        + commitment
        + E_i
        + opt(S_i)
        + E_r
        + opt(S_r)
    )


def ikm_initiator(e_i, s_i, E_r, S_r) -> bytes:
    ikm = dh(e_i, E_r)
    if s_i is not None:
        ikm += dh(s_i, E_r)
    if S_r is not None:
        ikm += dh(e_i, S_r)
    return ikm


def ikm_responder(e_r, s_r, E_i, S_i) -> bytes:
    ikm = dh(e_r, E_i)
    if S_i is not None:
        ikm += dh(e_r, S_i)
    if s_r is not None:
        ikm += dh(s_r, E_i)
    return ikm


def key_schedule(th: bytes, ikm: bytes) -> dict[str, bytes]:
    prk = hkdf_extract(th, ikm)
    return {
        "media_i2r": hkdf_expand(prk, LABEL_MEDIA_I2R, 32),
        "media_r2i": hkdf_expand(prk, LABEL_MEDIA_R2I, 32),
        "data_i2r": hkdf_expand(prk, LABEL_DATA_I2R, 32),
        "data_r2i": hkdf_expand(prk, LABEL_DATA_R2I, 32),
        "confirm_i": hkdf_expand(prk, LABEL_CONFIRM_I, 32),
        "confirm_r": hkdf_expand(prk, LABEL_CONFIRM_R, 32),
        "sas": hkdf_expand(prk, LABEL_SAS, 4),
    }


def confirm_mac(key: bytes, th: bytes) -> bytes:
    return hmac_sha256(key, LABEL_KEY_CONFIRMATION + th)


def epoch_keys(chain_0: bytes, epoch: int) -> tuple[bytes, bytes]:
    """Return (frame key, frame salt) of `epoch`, ratcheting from chain_0."""
    chain = chain_0
    for _ in range(epoch):
        chain = hkdf_expand(chain, LABEL_NEXT_CHAIN, 32)
    return hkdf_expand(chain, LABEL_FRAME_KEY, 32), hkdf_expand(chain, LABEL_FRAME_SALT, 12)


# ---------------------------------------------------------------------------
# §5 SAS
# ---------------------------------------------------------------------------


def sas_value(sas_bytes: bytes) -> int:
    return int.from_bytes(sas_bytes[:3], "big")


def sas_words(v: int) -> str:
    return " ".join(SAS_WORDS[(v >> sh) & 63] for sh in (18, 12, 6, 0))


def sas_digits(v: int) -> str:
    d = f"{v:08d}"
    return d[:4] + " " + d[4:]


def sas_from_words(s: str) -> int:
    parts = s.split(" ")
    assert len(parts) == 4
    v = 0
    for w in parts:
        v = (v << 6) | SAS_WORDS.index(w)
    return v


def sas_from_digits(s: str) -> int:
    assert len(s) == 9 and s[4] == " " and (s[:4] + s[5:]).isdigit()
    return int(s[:4] + s[5:])


# ---------------------------------------------------------------------------
# §7 Frames
# ---------------------------------------------------------------------------


def _field(value: int) -> tuple[int, int, bytes]:
    """(extended flag, 3-bit inline/length field, extra bytes), minimal encoding."""
    assert 0 <= value < 2**64
    if value < 8:
        return 0, value, b""
    n = (value.bit_length() + 7) // 8
    return 1, n - 1, value.to_bytes(n, "big")


def encode_header(kid: int, ctr: int) -> bytes:
    x, k, kid_bytes = _field(kid)
    y, c, ctr_bytes = _field(ctr)
    # Bit 0 of the diagram (X) is taken as the most significant bit (RFC 9605).
    config = (x << 7) | (k << 4) | (y << 3) | c
    return bytes([config]) + kid_bytes + ctr_bytes


def decode_header(frame: bytes) -> tuple[int, int, int]:
    """Strict parser: returns (kid, ctr, header length); rejects non-minimal forms."""
    if not frame:
        raise ValueError("malformed")
    cfg = frame[0]
    x, k, y, c = cfg >> 7, (cfg >> 4) & 7, (cfg >> 3) & 1, cfg & 7
    pos = 1

    def take(ext: int, f: int) -> int:
        nonlocal pos
        if not ext:
            return f
        n = f + 1
        raw = frame[pos : pos + n]
        if len(raw) != n or raw[0] == 0:
            raise ValueError("malformed")
        pos += n
        v = int.from_bytes(raw, "big")
        if v < 8:
            raise ValueError("malformed")
        return v

    kid = take(x, k)
    ctr = take(y, c)
    return kid, ctr, pos


def key_id(epoch: int, d: int) -> int:
    assert d in (0, 1)
    return ((epoch % 4) << 1) | d


def frame_nonce(salt: bytes, counter: int) -> bytes:
    assert len(salt) == 12
    c = bytes(4) + counter.to_bytes(8, "big")
    return bytes(a ^ b for a, b in zip(salt, c))


def protect(key: bytes, salt: bytes, epoch: int, d: int, counter: int, payload: bytes) -> bytes:
    assert len(payload) <= MAX_PAYLOAD
    header = encode_header(key_id(epoch, d), counter)
    ct = ChaCha20Poly1305(key).encrypt(frame_nonce(salt, counter), payload, header)
    frame = header + ct
    assert len(frame) <= MAX_FRAME
    return frame


def unprotect(key: bytes, salt: bytes, frame: bytes) -> tuple[int, int, bytes]:
    kid, ctr, hlen = decode_header(frame)
    if len(frame) < hlen + TAG_LEN:
        raise ValueError("malformed")
    header = frame[:hlen]
    pt = ChaCha20Poly1305(key).decrypt(frame_nonce(salt, ctr), frame[hlen:], header)
    return kid, ctr, pt


def _frame_self_tests() -> None:
    for lo, hi, hlen, overhead in OVERHEAD_TABLE:
        for ctr in (lo, hi):
            for kid in range(8):
                h = encode_header(kid, ctr)
                assert len(h) == hlen, (ctr, len(h), hlen)
                assert len(h) + TAG_LEN == overhead
                assert decode_header(h + bytes(TAG_LEN)) == (kid, ctr, hlen)
    # Non-minimal encodings are rejected.
    for bad in (bytes([0x08, 0x05]), bytes([0x09, 0x00, 0x08]), bytes([0x80, 0x03])):
        try:
            decode_header(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("non-minimal header accepted: " + bad.hex())
    # Key id wraps every 4 epochs and always fits inline.
    assert key_id(5, 1) == 3 and key_id(4, 0) == 0 and key_id(3, 1) == 7


# ---------------------------------------------------------------------------
# Deterministic inputs
# ---------------------------------------------------------------------------

SEED = "aparte/v1 test vectors"


def fixed(tag: str, n: int = 32) -> bytes:
    """Deterministic stand-in for random bytes: SHA-256 of a fixed string (chained if n > 32)."""
    out = b""
    i = 0
    while len(out) < n:
        out += H(f"{SEED} / {tag} / {i}".encode())
        i += 1
    return out[:n]


def fingerprint(tag: str) -> bytes:
    """Realistic SDP a=fingerprint value: 'sha-256 ' + 32 uppercase colon-separated hex bytes."""
    return ("sha-256 " + ":".join(f"{b:02X}" for b in fixed("dtls " + tag))).encode()


ROOM_ID = b"room-4f1c9a2e7b3d"

# Long-term identities are the same across cases (they are long-term).
IDENTITY_I = fixed("identity initiator")
IDENTITY_R = fixed("identity responder")

CASES = (
    ("no-identities", False, False),
    ("both-identities", True, True),
    ("initiator-identity-only", True, False),
)

# (chain, epoch, counter, payload length)
FRAME_PLAN = (
    ("media_i2r", 0, 0, 60),
    ("media_i2r", 0, 1, 1),
    ("media_i2r", 0, 7, 20),
    ("media_i2r", 0, 8, 120),
    ("media_i2r", 0, 255, 60),
    ("media_i2r", 0, 256, 0),
    ("media_i2r", 0, 300, 120),
    ("media_r2i", 0, 0, 60),
    ("media_r2i", 1, 0, 20),
    ("media_r2i", 2, 9, 1),
    ("data_i2r", 0, 0, 0),
    ("data_r2i", 5, 65_536, 20),
)

DIRECTION = {"media_i2r": 0, "data_i2r": 0, "media_r2i": 1, "data_r2i": 1}


# ---------------------------------------------------------------------------
# Case generation
# ---------------------------------------------------------------------------


def run_case(name: str, has_s_i: bool, has_s_r: bool) -> dict:
    room_id = ROOM_ID
    fp_i = fingerprint(f"{name} initiator")
    fp_r = fingerprint(f"{name} responder")
    assert fp_i != fp_r and len(fp_i) == 8 + 32 * 3 - 1
    e_i = fixed(f"{name} ephemeral initiator")
    e_r = fixed(f"{name} ephemeral responder")
    s_i = IDENTITY_I if has_s_i else None
    s_r = IDENTITY_R if has_s_r else None

    E_i, E_r = x25519_public(e_i), x25519_public(e_r)
    S_i = x25519_public(s_i) if s_i is not None else None
    S_r = x25519_public(s_r) if s_r is not None else None

    # --- Initiator: Commit
    commitment = commitment_of(E_i, S_i)
    commit = encode_commit(commitment)

    # --- Responder: Response
    response = encode_response(E_r, S_r)

    # --- Initiator: derive keys, Reveal
    th = transcript_hash(room_id, fp_i, fp_r, commitment, E_i, S_i, E_r, S_r)
    secrets = key_schedule(th, ikm_initiator(e_i, s_i, E_r, S_r))
    mac_i = confirm_mac(secrets["confirm_i"], th)
    reveal = encode_reveal(E_i, S_i, mac_i)

    # --- Responder: check commitment, derive keys, check mac_i, Confirm
    _, c_msg = decode_message(commit)
    _, rv = decode_message(reveal)
    assert hmac.compare_digest(commitment_of(rv["E_i"], rv["S_i"]), c_msg["commitment"])
    th_r = transcript_hash(
        room_id, fp_i, fp_r, c_msg["commitment"], rv["E_i"], rv["S_i"], E_r, S_r
    )
    secrets_r = key_schedule(th_r, ikm_responder(e_r, s_r, rv["E_i"], rv["S_i"]))
    assert th_r == th and secrets_r == secrets, "initiator and responder disagree"
    assert hmac.compare_digest(confirm_mac(secrets_r["confirm_i"], th_r), rv["mac_i"])
    mac_r = confirm_mac(secrets_r["confirm_r"], th_r)
    confirm = encode_confirm(mac_r)

    # --- Initiator: check mac_r
    _, cf = decode_message(confirm)
    assert hmac.compare_digest(confirm_mac(secrets["confirm_r"], th), cf["mac_r"])
    _, rs = decode_message(response)
    assert rs == {"E_r": E_r, "S_r": S_r}

    # --- §2 length checks
    assert len(commit) == LEN_COMMIT
    assert len(response) == LEN_RESPONSE[1 if has_s_r else 0]
    assert len(reveal) == LEN_REVEAL[1 if has_s_i else 0]
    assert len(confirm) == LEN_CONFIRM
    for m in (commit, response, reveal, confirm):
        assert len(m) <= MAX_MESSAGE
        assert m[1] == VERSION and m[2:4] == b"\xf0\xa1"
    # trailing bytes / wrong lengths are rejected
    for m in (commit, response, reveal, confirm):
        for bad in (m + b"\x00", m[:-1]):
            try:
                decode_message(bad)
            except ValueError:
                pass
            else:
                raise AssertionError("bad length accepted")

    # --- §5 SAS
    v = sas_value(secrets["sas"])
    words = sas_words(v)
    digits = sas_digits(v)
    assert 0 <= v < 2**24
    assert sas_from_words(words) == v
    assert sas_from_digits(digits) == v

    # --- §7 frames
    frames = []
    for chain, epoch, counter, plen in FRAME_PLAN:
        d = DIRECTION[chain]
        key, salt = epoch_keys(secrets[chain], epoch)
        payload = fixed(f"{name} payload {chain} {epoch} {counter}", plen) if plen else b""
        frame = protect(key, salt, epoch, d, counter, payload)
        # self-checks: header length vs §7 table, decrypt round trip, key id.
        kid, ctr, pt = unprotect(key, salt, frame)
        assert (kid, ctr, pt) == (key_id(epoch, d), counter, payload)
        assert kid <= 7 and (kid & 1) == d and (kid >> 1) == epoch % 4
        hlen = len(encode_header(kid, counter))
        row = next(r for r in OVERHEAD_TABLE if r[0] <= counter <= r[1])
        assert hlen == row[2] and len(frame) - len(payload) == row[3]
        frames.append(
            {
                "chain": chain,
                "epoch": epoch,
                "counter": counter,
                "payload": payload.hex(),
                "key": key.hex(),
                "salt": salt.hex(),
                "frame": frame.hex(),
            }
        )
    # The data_r2i epoch-5 frame must carry key id 3 (wrap).
    assert bytes.fromhex(frames[-1]["frame"])[0] >> 4 == 3

    return {
        "name": name,
        "room_id": room_id.hex(),
        "initiator_fingerprint": fp_i.hex(),
        "responder_fingerprint": fp_r.hex(),
        "initiator_ephemeral_secret": e_i.hex(),
        "responder_ephemeral_secret": e_r.hex(),
        "initiator_identity_secret": s_i.hex() if s_i is not None else None,
        "responder_identity_secret": s_r.hex() if s_r is not None else None,
        "commit": commit.hex(),
        "response": response.hex(),
        "reveal": reveal.hex(),
        "confirm": confirm.hex(),
        "transcript_hash": th.hex(),
        "secrets": {k: secrets[k].hex() for k in (
            "media_i2r", "media_r2i", "data_i2r", "data_r2i",
            "confirm_i", "confirm_r", "sas",
        )},
        "sas_value": v,
        "sas_words": words,
        "sas_digits": digits,
        "frames": frames,
    }


def main() -> None:
    _primitive_self_tests()
    _frame_self_tests()
    assert sas_digits(11259375) == "1125 9375"  # the example in §5
    doc = {
        "version": 1,
        "suite": SUITE,
        "generator": "crates/e2ee/tests/vectors/generate.py "
        "(independent Python implementation of docs/PROTOCOL.md)",
        "cases": [run_case(*c) for c in CASES],
    }
    # Cases must differ from each other.
    ths = {c["transcript_hash"] for c in doc["cases"]}
    assert len(ths) == len(CASES)
    out = Path(__file__).resolve().parent / "v1.json"
    text = json.dumps(doc, indent=2) + "\n"
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
