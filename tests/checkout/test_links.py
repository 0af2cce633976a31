"""Checkout tokens name exactly one VE."""

from __future__ import annotations

from billing.checkout_links import checkout_token, verify_checkout_token


def test_token_of_one_ve_does_not_open_another():
    assert verify_checkout_token("ve_aaaa", checkout_token("ve_aaaa"))
    assert not verify_checkout_token("ve_bbbb", checkout_token("ve_aaaa"))


def test_token_cannot_smuggle_part_of_the_id():
    # given: a valid token for an id with a separator in it ("ve_a:b")
    token = checkout_token("ve_a:b")
    # when: the id's tail moves into the token ("ve_a" + ":" + "b:ts:sig" is the same signed text)
    smuggled = "b:" + token
    # then: it signs "ve_a:b", not "ve_a"
    assert verify_checkout_token("ve_a:b", token)
    assert not verify_checkout_token("ve_a", smuggled)
