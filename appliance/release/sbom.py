"""A CycloneDX SBOM of what the appliance runs: the Python environment's distributions and the catalog's models.

It lives in ``release`` (publishing tooling, never imported by the device) because an SBOM is something a build
publishes: it reads the environment, the hash locks and the model store, and it needs cyclonedx-python-lib,
which nothing on the device's start-up path should import. It sits above ``models`` and uses only the catalog and
the store's read side.

What is in it:
- ``metadata.component``: the appliance itself, type *application* (the Python service; the firmware image holds
  more than this SBOM lists), version ``appliance.__version__``;
- one *library* per installed distribution: name, version, ``pkg:pypi`` purl, licence (License-Expression, else
  License, else the classifiers; an SPDX id or expression where valid, else the text as a name) and, when a lock
  pins the installed version, the sha256 of every locked file of that version, with one ``appliance:lock``
  property per lock that pins it (``appliance:lock:other-version`` where a lock pins another version);
- one *machine-learning-model* per catalog model: version is the catalog digest, and one nested *file*
  component per file with its sha256 (derived variants are properties, and files too once built in the store);
  ``appliance:model:store`` says ``active`` (or ``outdated``) when the local store holds it;
- dependencies: each distribution on its installed requirements (markers not evaluated; optional extras only
  for the appliance, installed with all of them), each model on the packages that carry its weights.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata

from cyclonedx.contrib.license.exceptions import InvalidSpdxLicenseException
from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.contrib.this.builders import this_component
from cyclonedx.model import AttachedText, HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import DisjunctiveLicense, License, LicenseAcknowledgement
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

import appliance
from appliance.models.catalog import Catalog, ModelEntry
from appliance.models.store import ModelStore
from appliance.release.locks import Pin, normalize

SPEC = max(SchemaVersion)  # the newest CycloneDX version the installed library writes (1.7 with 11.12)
SELF = "appliance"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_DECLARED = LicenseAcknowledgement.DECLARED


def build_bom(catalog: Catalog, store: ModelStore, locks: dict[str, list[Pin]]) -> Bom:
    """The whole SBOM: this environment's distributions (hashes from ``locks``), the catalog, the store's state."""
    dists = _distributions()
    self_dist = dists.pop(SELF, None)
    root = _appliance(self_dist)
    packages = {name: _package(dist, locks.get(name, [])) for name, dist in sorted(dists.items())}
    models = [_model(entry, store) for entry in catalog.models]
    bom = Bom(components=[*packages.values(), *models])
    bom.metadata.component = root
    bom.metadata.tools.components.add(this_component())
    bom.metadata.properties.update([Property(name="appliance:python", value=sys.version.split()[0]),
                                    Property(name="appliance:platform", value=f"{sys.platform}-{platform.machine()}")])
    bom.register_dependency(root, [*_requires(self_dist, packages, extras=True), *models])
    for name, dist in dists.items():
        bom.register_dependency(packages[name], list(_requires(dist, packages, extras=False)))
    for entry, model in zip(catalog.models, models, strict=True):
        bom.register_dependency(model, [packages[normalize(p)] for p in entry.packages if normalize(p) in packages])
    return bom


def render(bom: Bom) -> str:
    return make_outputter(bom, OutputFormat.JSON, SPEC).output_as_string(indent=2)


def _distributions() -> dict[str, metadata.Distribution]:
    """Installed distributions by normalized name; the first on sys.path wins, as import would."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        if dist.name:
            found.setdefault(normalize(dist.name), dist)
    return found


def _appliance(dist: metadata.Distribution | None) -> Component:
    summary = (appliance.__doc__ or "").strip().splitlines()[0]
    return Component(type=ComponentType.APPLICATION, name=SELF, version=appliance.__version__, bom_ref=SELF,
                     description=summary, licenses=_licences(dist.metadata) if dist else None)


def _package(dist: metadata.Distribution, pins: list[Pin]) -> Component:
    name, version = normalize(dist.name), dist.version
    matching = [p for p in pins if p.version == version]
    properties = [Property(name="appliance:lock", value=p.lock) for p in matching]
    properties += [Property(name="appliance:lock:other-version", value=f"{p.lock}: {p.version}")
                   for p in pins if p.version != version]
    hashes = sorted({h for p in matching for h in p.sha256})
    purl = PackageURL(type="pypi", name=name, version=version)
    return Component(type=ComponentType.LIBRARY, name=dist.name, version=version, purl=purl, bom_ref=purl.to_string(),
                     description=_field(dist.metadata, "Summary"), licenses=_licences(dist.metadata),
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=h) for h in hashes], properties=properties)


def _requires(dist: metadata.Distribution | None, packages: dict[str, Component], extras: bool) -> Iterator[Component]:
    for requirement in (dist.requires or []) if dist else []:
        match = _REQUIREMENT.match(requirement)
        if match and (extras or "extra" not in requirement.partition(";")[2]) and normalize(match[1]) in packages:
            yield packages[normalize(match[1])]


def _licences(meta: metadata.PackageMetadata) -> list[License]:
    factory = LicenseFactory()
    expression = _field(meta, "License-Expression")
    if expression:
        return [factory.make_from_string(expression, license_acknowledgement=_DECLARED)]
    text = (_field(meta, "License") or "").strip()
    if text.upper() == "UNKNOWN":
        text = ""
    if text and "\n" not in text and len(text) <= 100:
        return [factory.make_from_string(text, license_acknowledgement=_DECLARED)]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::") and c.count("::") >= 2]
    if classifiers:
        return [_id_or_name(factory, c) for c in dict.fromkeys(classifiers)]
    if text:  # a whole licence text: its first line names it, the text goes along
        return [DisjunctiveLicense(name=text.splitlines()[0][:100], text=AttachedText(content=text),
                                   acknowledgement=_DECLARED)]
    return []


def _id_or_name(factory: LicenseFactory, value: str) -> License:
    try:
        return factory.make_with_id(value, acknowledgement=_DECLARED)
    except InvalidSpdxLicenseException:
        return factory.make_with_name(value, acknowledgement=_DECLARED)


def _field(meta: metadata.PackageMetadata, key: str) -> str | None:
    values = meta.get_all(key)
    return str(values[0]) if values else None


def _model(entry: ModelEntry, store: ModelStore) -> Component:
    files = [_file(entry.id, variant, f.name, f.sha256, [f"{s.package}:{s.path}" for s in f.sources])
             for variant, variant_files in entry.variants.items() for f in variant_files]
    properties = [Property(name="appliance:model:task", value=entry.task),
                  Property(name="appliance:model:kind", value=entry.kind),
                  Property(name="appliance:model:languages", value=",".join(entry.languages))]
    for variant, how in entry.derived.items():
        note = f"{variant}/{how.name} from {how.source} by converter {how.converter}" + (
            f" ({how.note})" if how.note else "")
        properties.append(Property(name="appliance:model:derived", value=note))
        built = store.derived_sha256(variant, entry.sha256_of(how.source))
        files += [_file(entry.id, variant, name, sha, [], derived_from=how.source) for name, sha in built.items()]
    active = store.active_digest(entry.id)
    if active:
        state = "active" if active == entry.digest() else f"outdated (store holds {active})"
        properties.append(Property(name="appliance:model:store", value=state))
    return Component(type=ComponentType.MACHINE_LEARNING_MODEL, name=entry.id, version=entry.digest(),
                     bom_ref=f"model:{entry.id}", description=entry.description,
                     licenses=[LicenseFactory().make_from_string(entry.licence, license_acknowledgement=_DECLARED)],
                     properties=properties, components=files)


def _file(model_id: str, variant: str, name: str, sha256: str, sources: Iterable[str],
          derived_from: str | None = None) -> Component:
    properties = [Property(name="appliance:model:variant", value=variant)]
    properties += [Property(name="appliance:model:source", value=s) for s in sources]
    if derived_from:
        properties.append(Property(name="appliance:model:derived-from", value=derived_from))
    return Component(type=ComponentType.FILE, name=f"{variant}/{name}", bom_ref=f"model:{model_id}/{variant}/{name}",
                     hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)], properties=properties)
