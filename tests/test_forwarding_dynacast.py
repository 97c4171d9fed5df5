"""Dynacast's debounce (trio_sfu.forwarding.dynacast) as LiveKit behaves: more wanted is
announced at once, less only after the pause delay without a higher demand in between;
qualities up to the highest wanted are enabled, none when nobody wants the track."""

from __future__ import annotations

import pytest

import yaml

from trio_sfu.config import ConfigError, config_from_mapping
from trio_sfu.forwarding.dynacast import DynacastQuality, enabled_qualities
from trio_sfu.forwarding.simulcast import VideoQuality as Q


def test_upgrade_is_at_once_downgrade_after_the_delay():
    d = DynacastQuality(pause_delay=5.0)
    assert d.committed == Q.HIGH  # what a simulcast publisher starts sending
    assert d.demand({0}, 10.0) is None
    assert d.next_deadline() == 15.0
    assert d.poll(14.9) is None
    assert d.poll(15.0) == Q.LOW and d.committed == Q.LOW
    assert d.demand({0, 2}, 16.0) == Q.HIGH  # a subscriber wants HIGH: no wait
    assert d.next_deadline() is None


def test_a_downgrade_cancelled_by_demand_coming_back_is_never_sent():
    d = DynacastQuality(pause_delay=5.0)
    assert d.demand({1}, 0.0) is None
    assert d.demand({2}, 1.0) is None  # back to what is committed: nothing to say
    assert d.next_deadline() is None and d.poll(10.0) is None
    assert d.updates == 0


def test_further_downgrades_do_not_restart_the_wait():
    d = DynacastQuality(pause_delay=5.0)
    d.demand({1}, 0.0)
    d.demand(set(), 3.0)  # the last subscriber left
    assert d.next_deadline() == 5.0
    assert d.poll(5.0) == Q.OFF
    assert d.demand({0}, 6.0) == Q.LOW  # from OFF, anything is an upgrade


def test_enabled_qualities_up_to_the_highest_wanted():
    assert enabled_qualities(Q.MEDIUM) == [(Q.LOW, True), (Q.MEDIUM, True), (Q.HIGH, False)]
    assert enabled_qualities(Q.OFF) == [(Q.LOW, False), (Q.MEDIUM, False), (Q.HIGH, False)]
    assert DynacastQuality.quality_of({7, -1}) == Q.OFF  # no such layers: nothing wanted


def load_config_text(text: str):
    config, warnings = config_from_mapping(yaml.safe_load(text))
    assert warnings == []
    return config


def test_config_video_section():
    config = load_config_text("video:\n  dynacast_pause_delay: 500ms\n  dynacast: false\n")
    assert config.video.dynacast_pause_delay == 0.5 and config.video.dynacast is False
    assert load_config_text("video:\n  dynacast_pause_delay: 2\n").video.dynacast_pause_delay == 2.0
    with pytest.raises(ConfigError):
        load_config_text("video:\n  dynacast_pause_delay: soon\n")
    with pytest.raises(ValueError):
        DynacastQuality(pause_delay=-1)
