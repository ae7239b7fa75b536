"""Domain grouping for IRM and Mixup (on the host when the domains arrived on the CPU), and the
batch groupings VREx uses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.recipes import Batch, as_batch
from egl.recipes._domains import batch_groups, domain_groups


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), \
        torch.tensor([2, 0, 2, 0, 1, 1, 2, 0])


def test_host_copy_follows_the_domains_while_unchanged() -> None:
    x, y, d = _data()
    b = as_batch((x, y, d))
    assert b.domain_on_host() is b.domain
    moved = b.to("cpu")
    assert moved.domain_on_host() is b.domain  # the copy it came from
    assert dataclasses.replace(b, domain=d.clone()).domain_on_host() is None  # another tensor
    moved.domain[0] = 1  # changed after the copy was taken
    assert moved.domain_on_host() is None
    assert Batch(x, y, d).domain_on_host() is None  # built by hand: no host copy recorded
    assert as_batch((x, y)).domain_on_host() is None


def test_groups_found_on_the_host_equal_the_device_ones() -> None:
    _, _, d = _data()
    host = domain_groups(d, d.clone())
    direct = domain_groups(d)
    assert [g.tolist() for g in host] == [g.tolist() for g in direct] == [[1, 3, 7], [4, 5], [0, 2, 6]]


def test_irm_and_mixup_terms_do_not_depend_on_where_domains_are_grouped() -> None:
    x, y, d = _data()
    for make in (recipes.irm, recipes.mixup):
        terms = []
        for batch in (as_batch((x, y, d)), Batch(x, y, d)):  # host copy / none
            recipe = make(make_model("test_resnet"))
            torch.manual_seed(3)
            terms.append({k: v.detach() for k, v in recipe.compute_phase("classifier", batch, 0).items()})
        assert terms[0].keys() == terms[1].keys()
        for k in terms[0]:
            torch.testing.assert_close(terms[0][k], terms[1][k], rtol=0, atol=0, msg=k)


def test_batch_groups_partition_by_each_grouping() -> None:
    x, y, d = _data()
    s = torch.tensor([-1, 1, 2, 0, -1, -1, 0, 1])
    b = as_batch({"image": x, "label": y, "domain": d, "shortcut": s})
    want = {
        "domain": {(1, 3, 7), (4, 5), (0, 2, 6)},
        "class": {(0, 3, 6), (1, 4, 7), (2, 5)},
        "domain_class": {(0, 6), (1, 7), (2,), (3,), (4,), (5,)},
        "shortcut": {(0,), (3, 6), (1, 7), (4,), (2,), (5,)},
    }
    for by, groups in want.items():
        got = batch_groups(b, by, "fn", "M")
        assert {tuple(g.tolist()) for g in got} == groups, by
        assert sorted(i for g in got for i in g.tolist()) == list(range(8))
        built = batch_groups(Batch(x, y, d, shortcut=s), by, "fn", "M")  # no host copies: grouped where they are
        assert [g.tolist() for g in built] == [g.tolist() for g in got], by


def test_batch_groups_name_the_labels_a_grouping_needs() -> None:
    x, y, _ = _data()
    with pytest.raises(egl.InputError, match=r"fn: 'batch' expected dict batches with key 'shortcut'"):
        batch_groups(as_batch((x, y)), "shortcut", "fn", "M")
    with pytest.raises(egl.InputError, match=r"M with groups='domain_class' needs \(x, y, domain\) batches"):
        batch_groups(as_batch((x, y)), "domain_class", "fn", "M")
    assert [g.tolist() for g in batch_groups(as_batch((x, y)), "class", "fn", "M")] == [[0, 3, 6], [1, 4, 7], [2, 5]]
