"""The annotation pickles (RefCOCO ``refs(*).p``, Ref-DAVIS17 / Ref-YouTube-VOS ``mask_dict.pkl``)
are read with a restricted unpickler: the files the formats hold load as before, at every pickle
protocol; a file that asks for any global (here ``exec`` with a payload) is a DatasetFormatError
naming it, and the payload never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from data_fixture_writers import write_ref_davis_pkl, write_refcoco_by_hand
from hostile_pickles import Payload, write_poisoned_pickle
from salma.data.annotation_files import load_pickle_file
from salma.data.errors import DatasetFormatError
from salma.data.ref_vos import read_ref_davis17
from salma.data.refcoco import read_refcoco


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_builtin_containers_and_scalars_load_at_every_protocol(tmp_path, protocol):
    data = {"0": [{"size": [4, 5], "counts": b"\x00\xff12"}, None], "refs": [(1, 2.5, "s", True)], "n": -(2**70)}
    file = tmp_path / "data.pkl"
    file.write_bytes(pickle.dumps(data, protocol=protocol))
    assert load_pickle_file(file) == data


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(lambda marker: Payload(marker), id="exec payload"),
        pytest.param(lambda marker: {1, 2}, id="a set (a global at protocol 2)"),
        pytest.param(lambda marker: Path(marker), id="a class instance"),
    ],
)
def test_anything_naming_a_global_is_refused(tmp_path, hostile):
    marker = tmp_path / "payload-ran"
    file = tmp_path / "refs(unc).p"
    write_poisoned_pickle(file, [{"ref_id": 1, "sentences": [hostile(marker)]}])
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p.*refused to unpickle: it asks for the global"):
        load_pickle_file(file)
    assert not marker.exists()


def test_codecs_encode_is_only_admitted_as_latin1_bytes(tmp_path):
    # _codecs.encode is the one global admitted (protocol-2 bytes); any other use of it is refused.
    file = tmp_path / "mask_dict.pkl"
    file.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(DatasetFormatError, match="mask_dict.pkl: refused to unpickle: it calls _codecs.encode"):
        load_pickle_file(file)
    for garbage in (b"", b"\x80\x02]q\x00(K\x01", b"not a pickle at all"):
        file.write_bytes(garbage)
        with pytest.raises(DatasetFormatError, match="mask_dict.pkl"):
            load_pickle_file(file)


def test_poisoned_refs_pickle_through_the_refcoco_reader(tmp_path):
    dataset = write_refcoco_by_hand(tmp_path)
    refs = load_pickle_file(dataset / "refs(unc).p")
    refs[0]["sentences"][0]["raw"] = Payload(tmp_path / "payload-ran")
    write_poisoned_pickle(dataset / "refs(unc).p", refs)
    with pytest.raises(DatasetFormatError, match=r"refs\(unc\)\.p: refused to unpickle: it asks for the global"):
        read_refcoco(dataset, "train")
    assert not (tmp_path / "payload-ran").exists()


def test_poisoned_mask_dict_pickle_through_the_ref_davis_reader(tmp_path):
    write_ref_davis_pkl(tmp_path, "valid")
    mask_dict = load_pickle_file(tmp_path / "valid" / "mask_dict.pkl")
    mask_dict["0"][0] = Payload(tmp_path / "payload-ran")
    write_poisoned_pickle(tmp_path / "valid" / "mask_dict.pkl", mask_dict)
    with pytest.raises(DatasetFormatError, match=r"mask_dict\.pkl: refused to unpickle: it asks for the global"):
        read_ref_davis17(tmp_path, "valid")
    assert not (tmp_path / "payload-ran").exists()
