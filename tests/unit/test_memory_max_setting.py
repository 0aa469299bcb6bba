"""``memory_max``: in ``[supervisor]`` for every slot, or per slot; MB, 0 = no limit."""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.settings import SettingsError, load_settings


def settings(tmp_path, text: str):
    path = tmp_path / "bgrscrpt.toml"
    path.write_text(text)
    return load_settings(path, config_dir=tmp_path, slot_count=2)


def test_memory_max_for_every_slot_and_per_slot(tmp_path):
    loaded = settings(
        tmp_path, "[supervisor]\nmemory_max = 500\n[slots.BGRSCRPT_02]\nmemory_max = 0\n"
    )
    assert [slot.policy.memory_max for slot in loaded.slots] == [500.0, 0.0]


def test_no_memory_max_means_no_limit(tmp_path):
    assert [slot.policy.memory_max for slot in settings(tmp_path, "").slots] == [0.0, 0.0]


@pytest.mark.parametrize("value", ["-1", "1e9", "nan", '"500MB"', "true"])
def test_a_bad_memory_max_names_its_key(tmp_path, value):
    with pytest.raises(SettingsError, match=r"bgrscrpt.toml:2: slots.BGRSCRPT_01.memory_max: must"):
        settings(tmp_path, f"[slots.BGRSCRPT_01]\nmemory_max = {value}\n")
