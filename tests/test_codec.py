"""The payload codec on its own: round trip, no plaintext in the bytes, tampering and unknown keys fail."""

from __future__ import annotations

import secrets
import stat

import pytest
from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from models.secret import Secret
from quartermaster.codec import ENCODING, KEY_ID_METADATA, EncryptionCodec, PayloadDecryptionError
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring, load_keyring, write_key_file
from tests.leak_scan import find_in_blobs


class Credentials(BaseModel):
    resource_id: str
    api_token: Secret
    tokens: list[Secret] = []


def canary() -> str:
    return "canary" + secrets.token_hex(12)


async def encode(keyring: Keyring, value: object) -> Payload:
    [payload] = await data_converter(EncryptionCodec(keyring)).encode([value])
    return payload


async def test_round_trip_restores_secrets_and_fields() -> None:
    keyring = Keyring.generate()
    value = Credentials(resource_id="res_visible_1", api_token=Secret(canary()), tokens=[Secret(canary())])
    payload = await encode(keyring, value)
    [back] = await data_converter(EncryptionCodec(keyring)).decode([payload], [Credentials])
    assert back == value
    assert back.api_token.reveal() == value.api_token.reveal()


async def test_encoded_bytes_hold_no_plaintext() -> None:
    keyring = Keyring.generate()
    token, visible = canary(), "visible" + secrets.token_hex(8)
    payload = await encode(keyring, Credentials(resource_id=visible, api_token=Secret(token)))
    raw = payload.SerializeToString()
    assert payload.metadata["encoding"] == ENCODING
    assert payload.metadata[KEY_ID_METADATA] == b"p1"
    # neither the secret nor the ordinary field, in text, hex or base64 form
    assert find_in_blobs({"payload": raw}, [token, visible, "resource_id", "__qm_secret__"]) == []


async def test_codec_only_keyring_decodes_fields_but_not_secrets() -> None:
    keyring = Keyring.generate()
    token = canary()
    payload = await encode(keyring, Credentials(resource_id="res_visible_2", api_token=Secret(token)))
    for codec in (EncryptionCodec(keyring.codec_only()), EncryptionCodec(keyring, redact_secrets=True)):
        [decoded] = await codec.decode([payload])
        assert b"res_visible_2" in decoded.data
        assert b'"***"' in decoded.data
        assert find_in_blobs({"decoded": decoded.SerializeToString()}, [token]) == []


async def test_tampered_ciphertext_fails_clearly() -> None:
    keyring = Keyring.generate()
    payload = await encode(keyring, Credentials(resource_id="r", api_token=Secret(canary())))
    for position in (0, 20, len(payload.data) - 1):  # nonce, body, tag
        forged = Payload()
        forged.CopyFrom(payload)
        data = bytearray(forged.data)
        data[position] ^= 0x01
        forged.data = bytes(data)
        with pytest.raises(PayloadDecryptionError, match="tampered"):
            await EncryptionCodec(keyring).decode([forged])


async def test_ciphertext_moved_to_another_key_id_fails() -> None:
    keyring = Keyring.generate().rotated()
    payload = await encode(keyring, "hello")
    payload.metadata[KEY_ID_METADATA] = b"p1"  # claims the older key
    with pytest.raises(PayloadDecryptionError, match="'p1'"):
        await EncryptionCodec(keyring).decode([payload])


async def test_unknown_key_id_fails_clearly() -> None:
    written_under_p3 = await encode(Keyring.generate().rotated().rotated(), "hello")
    with pytest.raises(PayloadDecryptionError, match=r"no payload key with id 'p3'"):
        await EncryptionCodec(Keyring.generate()).decode([written_under_p3])
    # same kid, other key bytes (a regenerated key file): authentication fails, no garbage comes out
    written_under_p1 = await encode(Keyring.generate(), "hello")
    with pytest.raises(PayloadDecryptionError, match="tampered"):
        await EncryptionCodec(Keyring.generate()).decode([written_under_p1])


async def test_rotated_keyring_encrypts_with_newest_and_decrypts_old() -> None:
    old = Keyring.generate()
    new = old.rotated()
    token = canary()
    old_payload = await encode(old, Credentials(resource_id="r", api_token=Secret(token)))
    new_payload = await encode(new, Credentials(resource_id="r", api_token=Secret(token)))
    assert new_payload.metadata[KEY_ID_METADATA] == b"p2"
    conv = data_converter(EncryptionCodec(new))
    [a, b] = await conv.decode([old_payload, new_payload], [Credentials, Credentials])
    assert a.api_token.reveal() == b.api_token.reveal() == token
    with pytest.raises(PayloadDecryptionError, match="'p2'"):
        await EncryptionCodec(old).decode([new_payload])


async def test_plain_payloads_pass_through_decode() -> None:
    [plain] = await data_converter(None).encode(["from before encryption"])
    assert await EncryptionCodec(Keyring.generate()).decode([plain]) == [plain]


async def test_codec_only_keys_refuse_to_encode_a_secret() -> None:
    [plain] = await data_converter(None).encode([Credentials(resource_id="r", api_token=Secret("x" * 12))])
    with pytest.raises(RuntimeError, match="no seal key"):
        await EncryptionCodec(Keyring.generate().codec_only()).encode([plain])


async def test_failure_message_and_stack_are_encrypted() -> None:
    keyring = Keyring.generate()
    token = canary()
    conv = data_converter(EncryptionCodec(keyring))
    failure = Failure()
    try:
        raise ApplicationError(f"provider rejected {token}", type="ProviderRejected")
    except ApplicationError as exc:
        await conv.encode_failure(exc, failure)
    assert find_in_blobs({"failure": failure.SerializeToString()}, [token, "provider rejected"]) == []
    assert failure.message == "Encoded failure"
    back = await data_converter(EncryptionCodec(keyring)).decode_failure(failure)
    assert token in str(back)


def test_key_file_is_owner_only(tmp_path) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, Keyring.generate())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    created = tmp_path / "dev" / "keys.json"
    load_keyring(created, create=True)
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
