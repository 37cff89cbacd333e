"""The contract keeps every name, number and type of the original (wire and JSON compatible).

Both files are compiled to descriptor sets with grpcio-tools and compared as data, so
nothing is imported into the process's descriptor pool.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
ORIGINAL = ROOT / "tests/contract/original"
CURRENT = ROOT / "proto"
FILE = "southwest/ai/agent/v1/agent.proto"


def compile_set(include: Path, tmp_path: Path, name: str) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / f"{name}.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"--descriptor_set_out={out}", FILE],
        check=True,
        capture_output=True,
    )
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    [file] = descriptor_set.file
    return file


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[descriptor_pb2.FileDescriptorProto, ...]:
    tmp = tmp_path_factory.mktemp("descriptors")
    return compile_set(ORIGINAL, tmp, "original"), compile_set(CURRENT, tmp, "current")


def test_package_service_and_method_are_unchanged(files: tuple[descriptor_pb2.FileDescriptorProto, ...]) -> None:
    original, current = files
    assert current.package == original.package == "southwest.ai.agent.v1"
    [old_service] = original.service
    new_service = {s.name: s for s in current.service}[old_service.name]
    for old_method in old_service.method:
        new_method = {m.name: m for m in new_service.method}[old_method.name]
        assert (new_method.input_type, new_method.output_type) == (old_method.input_type, old_method.output_type)
        assert new_method.client_streaming and new_method.server_streaming


def test_every_original_field_keeps_number_type_name_json_name_and_oneof(
    files: tuple[descriptor_pb2.FileDescriptorProto, ...],
) -> None:
    original, current = files
    new_messages = {m.name: m for m in current.message_type}
    for old in original.message_type:
        assert old.name in new_messages, f"message {old.name} was removed or renamed"
        new = new_messages[old.name]
        new_fields = {f.number: f for f in new.field}
        for field in old.field:
            assert field.number in new_fields, f"{old.name}.{field.name} (#{field.number}) was removed"
            moved = new_fields[field.number]
            where = f"{old.name}.{field.name} #{field.number}"
            assert moved.name == field.name, f"{where} renamed to {moved.name}"
            assert moved.json_name == field.json_name, f"{where}: JSON name changed"
            assert (moved.type, moved.type_name, moved.label) == (field.type, field.type_name, field.label), where
            old_oneof = old.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
            new_oneof = new.oneof_decl[moved.oneof_index].name if moved.HasField("oneof_index") else None
            assert new_oneof == old_oneof, f"{where} moved from oneof {old_oneof} to {new_oneof}"


def test_additions_use_new_numbers_and_are_not_required(files: tuple[descriptor_pb2.FileDescriptorProto, ...]) -> None:
    original, current = files
    old_numbers = {m.name: {f.number for f in m.field} for m in original.message_type}
    old_names = {m.name: {f.name for f in m.field} for m in original.message_type}
    for message in current.message_type:
        for field in message.field:
            if field.number in old_numbers.get(message.name, set()):
                continue
            assert field.name not in old_names.get(message.name, set()), f"{message.name}.{field.name} renumbered"
            assert field.label != descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED
