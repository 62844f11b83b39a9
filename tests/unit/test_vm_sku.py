"""ceVmSku (steps/prepare/vmsku.py, ce/data/azure_vm_sizes.json): size names parsed by Azure's naming convention,
the rules of the series ce has Azure's documents for, and how prepare / prepareAndPublish refuse what a size cannot
run. No appliance: the image's side (stornvme Start=0 written, read back two ways) is in
tests/guest/test_prepare_and_publish.py. Expected values are written out from the Azure pages, not read from the
data file."""
from __future__ import annotations

import pytest

from ce.errors import InvalidParams, VmSkuNeedsUefi, VmSkuUnsupported
from ce.step import step_types
from steps.prepare import vmsku

TYPES = step_types()


@pytest.mark.parametrize("name, series, vcpus", [
    ("Standard_D2s_v3", "Dsv3", 2), ("standard_D4ads_v6", "Dadsv6", 4), ("Standard_D2as_v6", "Dasv6", 2),
    ("Standard_E8-4ds_v5", "Edsv5", 8), ("Standard_NC4as_T4_v3", "NCasT4v3", 4), ("Standard_M416ms_v2", "Mmsv2", 416),
    ("Standard_A4", "A", 4)])
def test_names_parse_by_the_naming_convention(name, series, vcpus):
    size = vmsku.parse(name)
    assert (size.series, size.vcpus, size.name) == (series, vcpus, name)


@pytest.mark.parametrize("name", ["", "D2s_v3", "Standard_", "Standard_d2s_v3", "Standard_D0s_v3", "Standard_D2s_v",
                                  "Standard_D2s_v3 ", "Standard_D2s_v3;calc", "Standard_D2s_v3\n", "../Standard_D2s",
                                  "Premium_D2s_v3", "Standard_D2s_v3_v4x"])
def test_other_names_are_refused_naming_the_field(name):
    with pytest.raises(InvalidParams) as refused:
        vmsku.parse(name)
    assert refused.value.field == "ceVmSku" and "naming" in refused.value.message


def test_azure_without_a_sku_is_the_service_default_which_needs_nothing():
    size = vmsku.validate(None, "azure")
    assert size.name == "Standard_D2s_v3" and size.series == "Dsv3"
    assert size.rule["temp_disk"] is True and size.rule["generations"] == [1, 2]
    assert vmsku.requirements(size, "bios", "mbr") == ([], [])         # Generation 1 and 2, SCSI


@pytest.mark.parametrize("platform", ["aws", "gcp", "vsphere", "xenserver", "nutanix", None])
def test_a_sku_for_another_platform_is_refused(platform):
    assert vmsku.validate(None, platform) is None
    with pytest.raises(InvalidParams) as refused:
        vmsku.validate("Standard_D2s_v3", platform)
    assert refused.value.field == "ceVmSku" and "targetPlatform azure" in refused.value.message


@pytest.mark.parametrize("name", ["Standard_D2as_v6", "Standard_D4s_v6", "Standard_D2s_v5", "Standard_D2_v5",
                                  "Standard_D8as_v5", "Standard_E4s_v5", "Standard_E2as_v5", "Standard_E2_v5"])
def test_sizes_without_a_temporary_disk_are_refused(name):
    with pytest.raises(VmSkuUnsupported) as refused:
        vmsku.validate(name, "azure")
    assert refused.value.code == "vm_sku_unsupported" and name in refused.value.message
    assert "learn.microsoft.com" in refused.value.message


@pytest.mark.parametrize("name", ["Standard_D2ds_v6", "Standard_D4ads_v6"])
def test_generation_2_only_sizes_refuse_a_bios_image_and_point_to_convert_to_uefi(name):
    size = vmsku.validate(name, "azure")
    with pytest.raises(VmSkuNeedsUefi) as refused:
        vmsku.requirements(size, "bios", "mbr")
    assert refused.value.code == "vm_sku_needs_uefi"
    assert "convertToUefi" in refused.value.message and "BIOS" in refused.value.message
    assert "Generation 1 VMs: Not Supported" not in refused.value.message     # the citation, not the page text


@pytest.mark.parametrize("name", ["Standard_D2ds_v6", "Standard_D4ads_v6"])
def test_nvme_only_sizes_need_stornvme_at_boot(name):
    warnings, drivers = vmsku.requirements(vmsku.validate(name, "azure"), "uefi", "gpt")
    assert warnings == []
    assert [(d["service"], d["file"], d["start"], d["missing"]) for d in drivers] == \
        [("stornvme", "stornvme.sys", 0, "error")]
    assert name in drivers[0]["needed_by"] and "converting-scsi-to-nvme-storage" in drivers[0]["cite"]


def test_a_series_without_rules_is_accepted_with_a_warning():
    size = vmsku.validate("Standard_E4bds_v5", "azure")
    warnings, drivers = vmsku.requirements(size, "bios", "mbr")
    assert [code for code, _ in warnings] == ["vm_sku_unchecked"] and drivers == []
    assert size.facts() == {"name": "Standard_E4bds_v5", "series": "Ebdsv5", "known": False, "tempDisk": None,
                            "generations": None, "storage": None, "sources": []}


def test_every_rule_cites_an_azure_document():
    data = vmsku.rules()
    for key, source in data["sources"].items():
        assert source["url"].startswith("https://learn.microsoft.com/en-us/azure/virtual-machines/"), key
        assert source["title"] and source["says"], key
    assert data["nvme_driver"]["source"] in data["sources"]
    for series, rule in data["series"].items():
        assert set(rule) <= {"temp_disk", "generations", "storage", "sources"}, series
        assert rule["sources"] and set(rule["sources"]) <= set(data["sources"]), series
        assert vmsku.parse(f"Standard_{series[0]}2{series[1:].replace('v', '_v')}").series == series


def test_prepare_and_prepare_and_publish_take_ce_vm_sku():
    for name, extra in (("prepare", {}), ("prepareAndPublish", {
            "outputStorageLocation": {"Location": r"\\h\s", "credentials": {"username": "u", "password": "p4ssw0rd!"}},
            "vDiskName": "V"})):
        kind = TYPES[name]
        base = {"disk": "/dev/sdb", "provisioningType": "Mcs", "targetPlatform": "azure", **extra}
        assert kind.parse({**base, "ceVmSku": "Standard_D2ds_v6"}).ceVmSku == "Standard_D2ds_v6"
        assert kind.parse(base).ceVmSku is None
        with pytest.raises(VmSkuUnsupported):
            kind.parse({**base, "ceVmSku": "Standard_D2as_v6"})
        with pytest.raises(InvalidParams):
            kind.parse({**base, "targetPlatform": "gcp", "ceVmSku": "Standard_D2ds_v6"})
