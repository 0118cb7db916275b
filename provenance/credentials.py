"""Content credentials: a signed C2PA manifest in every picture, video and audio file Atelier
generates, a signed sidecar manifest beside every MIDI file (C2PA does not cover MIDI), and the
check that reads either back. Design notes, the certificate and measurements: docs/credentials.md.
"""
from __future__ import annotations

import base64
import datetime
import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomic import atomic_path, atomic_write_bytes, atomic_write_json

CREDENTIALS_DIR = "credentials"  # under the data root: the local certificate chain and key
CHAIN_FILE, KEY_FILE, CA_FILE = "signer-chain.pem", "signer.key", "ca.pem"
CERT_ENV, KEY_ENV, TSA_ENV = "ATELIER_SIGNING_CERT", "ATELIER_SIGNING_KEY", "ATELIER_TSA_URL"
LOCAL_VALIDITY = datetime.timedelta(days=3650)

MIME_TYPES = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4", ".wav": "audio/wav"}
SIDECAR_MEDIA = (".mid", ".midi")
SIDECAR_SUFFIX = ".c2pa.json"
SIDECAR_FORMAT = "atelier-sidecar-manifest-1"

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC + "trainedAlgorithmicMedia"
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"  # generated media beside training or real media
LINEAGE_LABEL = "org.atelier.lineage"
TRAINING_MINING_LABEL = "cawg.training-mining"  # C2PA 2.x moved it from c2pa.* to the CAWG
# Generated media should not train other generative models (model collapse; the training data's own
# licences may not allow it either). Showing and analysing them is fine.
TRAINING_MINING = {
    "cawg.ai_generative_training": {"use": "notAllowed"},
    "cawg.ai_training": {"use": "notAllowed"},
    "cawg.data_mining": {"use": "notAllowed"},
    "cawg.ai_inference": {"use": "allowed"},
}
EDITED_CODES = ("assertion.dataHash.mismatch", "assertion.bmffHash.mismatch", "assertion.boxesHash.mismatch",
                "assertion.collectionHash.mismatch")
UNTRUSTED_CODE = "signingCredential.untrusted"
NOT_FAILURES = {UNTRUSTED_CODE}  # an unknown authority says nothing about whether the file was changed
# Nothing leaves the machine: no thumbnails to embed (they cost more than the signature), no remote manifests.
C2PA_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"remote_manifest_fetch": False}}


@dataclass(frozen=True)
class Provenance:
    """What made a generated file: the registered model version, its training run, data and code, the seeds."""

    model_name: str
    model_version: str
    mlflow_run_id: str
    data_version: str
    git_commit: str
    seeds: tuple[int, ...] = ()
    training_licences: Mapping[str, int] | None = None  # licence identifier -> number of training files
    training_attribution: str | None = None

    @classmethod
    def of_model_version(cls, model_version, seeds: Iterable[int]) -> Provenance:
        """From an MLflow ModelVersion's lineage tags (and licence tags, where the version has them)."""
        tags = model_version.tags
        licences = tags.get("training_licences")
        return cls(model_version.name, str(model_version.version), model_version.run_id,
                   tags.get("data_version", "unknown"), tags.get("git_commit", "unknown"), tuple(seeds),
                   json.loads(licences) if licences else None, tags.get("training_attribution"))

    def fields(self) -> dict:
        """The manifest's lineage assertion. Seeds as text: C2PA's CBOR reads a list of small ints back as bytes."""
        return {key: ", ".join(map(str, value)) if key == "seeds" else value
                for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class SigningIdentity:
    certificate_chain: bytes  # PEM, the end-entity certificate first
    private_key: bytes  # PEM
    tsa_url: str | None
    local: bool  # Atelier's own certificate authority, not one a validator knows

    @property
    def algorithm(self) -> c2pa.C2paSigningAlg:
        return signing_algorithm(serialization.load_pem_private_key(self.private_key, password=None))

    def signer(self) -> c2pa.Signer:
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.algorithm, self.certificate_chain, self.private_key,
                                                         self.tsa_url))


@dataclass
class Verification:
    """What `verify_file` found. state: valid, edited (signed, then changed), invalid, or none (no credential)."""

    path: Path
    state: str
    fields: dict = field(default_factory=dict)
    source_type: str | None = None
    signer: str | None = None
    trusted: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.state == "valid"


# --- the signing identity ------------------------------------------------------------------


def signing_identity(data_root: str | os.PathLike) -> SigningIdentity:
    """The certificate chain and key named by $ATELIER_SIGNING_CERT and $ATELIER_SIGNING_KEY, else the
    local ones under <data_root>/credentials/, created on first use."""
    tsa_url = os.environ.get(TSA_ENV) or None
    if os.environ.get(CERT_ENV) or os.environ.get(KEY_ENV):
        if not (os.environ.get(CERT_ENV) and os.environ.get(KEY_ENV)):
            raise ValueError(f"set both {CERT_ENV} (PEM certificate chain) and {KEY_ENV} (PEM private key), or neither")
        return SigningIdentity(Path(os.environ[CERT_ENV]).read_bytes(), Path(os.environ[KEY_ENV]).read_bytes(),
                               tsa_url, local=False)
    folder = Path(data_root) / CREDENTIALS_DIR
    if not (folder / KEY_FILE).exists():
        create_local_identity(folder)
    return SigningIdentity((folder / CHAIN_FILE).read_bytes(), (folder / KEY_FILE).read_bytes(), tsa_url, local=True)


def create_local_identity(folder: Path) -> None:
    """A local CA and an end-entity certificate it issues (digitalSignature, emailProtection: what C2PA
    validators require of a signer), written to a temporary folder renamed into place whole, so two
    processes starting at once never pair one's key with the other's certificate."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(_name("Atelier local CA"), ca_key.public_key(), _name("Atelier local CA"), ca_key, ca=True)
        signer = _certificate(_name("Atelier local signer"), key.public_key(), ca.subject, ca_key, ca=False)
        pem = serialization.Encoding.PEM
        atomic_write_bytes(staging / CA_FILE, ca.public_bytes(pem))
        atomic_write_bytes(staging / CHAIN_FILE, signer.public_bytes(pem) + ca.public_bytes(pem))
        key_path = atomic_write_bytes(staging / KEY_FILE, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                            serialization.NoEncryption()))
        os.chmod(key_path, 0o600)  # mkstemp's mode already; said here because it matters
        os.rename(staging, folder)  # fails if another process got there first: its identity stands
    except OSError:
        if not (folder / KEY_FILE).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier self-issued"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, public_key, issuer: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + LOCAL_VALIDITY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def signing_algorithm(key) -> c2pa.C2paSigningAlg:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        return c2pa.C2paSigningAlg[by_curve[key.curve.name]]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    raise ValueError(f"C2PA cannot sign with a {type(key).__name__}")


# --- signing ---------------------------------------------------------------------------------


def is_signable(path: Path) -> bool:
    return path.suffix.lower() in MIME_TYPES or path.suffix.lower() in SIDECAR_MEDIA


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def sign_file(path: str | os.PathLike, provenance: Provenance, data_root: str | os.PathLike,
              source_type: str = TRAINED, identity: SigningIdentity | None = None) -> Path:
    """Embed a signed manifest in a PNG, GIF, MP4 or WAV (replacing the file atomically), or write
    a signed `<file>.c2pa.json` beside a MIDI file; returns the file that holds the credential."""
    path = Path(path)
    identity = identity or signing_identity(data_root)
    assertions = manifest_assertions(provenance, source_type)
    if path.suffix.lower() in SIDECAR_MEDIA:
        return write_sidecar(path, assertions, identity)
    mime_type = MIME_TYPES.get(path.suffix.lower())
    if mime_type is None:
        raise ValueError(f"{path.name}: no content credential for {path.suffix or 'files without a suffix'}")
    definition = {"claim_generator_info": [{"name": "Atelier"}], "title": path.name, "assertions": assertions}
    with (c2pa.Context(settings=c2pa.Settings.from_dict(C2PA_SETTINGS)) as context,
          identity.signer() as signer, c2pa.Builder(definition, context=context) as builder,
          atomic_path(path) as signed):
        with open(path, "rb") as source, open(signed, "w+b") as destination:
            builder.sign(signer, mime_type, source, destination)
    return path


def sign_folder(folder: str | os.PathLike, provenance: Provenance, data_root: str | os.PathLike,
                seeds: Mapping[str, Iterable[int]] | None = None, composites: Iterable[str] = (),
                skip: Iterable[str] = ()) -> list[Path]:
    """Sign every generated file in `folder` (a gallery): `seeds` by file name where they differ from the
    provenance's; `composites` and `skip` are file-name patterns (generated media beside other media;
    files that are not generated media, such as plots)."""
    identity = signing_identity(data_root)
    composites, skip, seeds = list(composites), list(skip), seeds or {}
    signed = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or not is_signable(path) or any(fnmatch.fnmatch(path.name, p) for p in skip):
            continue
        composite = any(fnmatch.fnmatch(path.name, pattern) for pattern in composites)
        file_provenance = replace(provenance, seeds=tuple(seeds[path.name])) if path.name in seeds else provenance
        sign_file(path, file_provenance, data_root, COMPOSITE if composite else TRAINED, identity)
        signed.append(path)
    return signed


def manifest_assertions(provenance: Provenance, source_type: str) -> list[dict]:
    agent = f"Atelier {provenance.model_name} version {provenance.model_version}"
    return [
        {"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": source_type, "softwareAgent": {"name": agent}}]}},
        {"label": LINEAGE_LABEL, "data": provenance.fields()},
        {"label": TRAINING_MINING_LABEL, "data": {"entries": TRAINING_MINING}},
    ]


# --- the MIDI sidecar ------------------------------------------------------------------------


def write_sidecar(path: Path, assertions: list[dict], identity: SigningIdentity) -> Path:
    """`<file>.c2pa.json`: the manifest's assertions, the file's SHA-256 and the certificate chain,
    signed (over the canonical JSON of all of that) with the same key as the embedded manifests."""
    payload = {"format": SIDECAR_FORMAT, "file": path.name, "sha256": _sha256(path), "assertions": assertions,
               "signed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "certificate_chain": identity.certificate_chain.decode("ascii")}
    key = serialization.load_pem_private_key(identity.private_key, password=None)
    signature = _sign_bytes(key, _canonical(payload))
    return atomic_write_json(sidecar_path(path), {**payload, "signature": base64.b64encode(signature).decode("ascii")})


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _sign_bytes(key, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256())
    return key.sign(data)  # Ed25519


def _verify_bytes(public_key, signature: bytes, data: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH),
                          hashes.SHA256())
    else:
        public_key.verify(signature, data)


def verify_sidecar(path: Path) -> Verification:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return Verification(path, "none")
    try:
        document = json.loads(sidecar.read_text())
        signature = base64.b64decode(document.pop("signature"))
        chain = x509.load_pem_x509_certificates(document["certificate_chain"].encode("ascii"))
        for certificate, issuer in zip(chain, chain[1:]):
            certificate.verify_directly_issued_by(issuer)
        _verify_bytes(chain[0].public_key(), signature, _canonical(document))
    except (ValueError, KeyError, TypeError, InvalidSignature) as error:
        return Verification(path, "invalid", problems=[f"sidecar signature does not verify ({type(error).__name__})"])
    found = _from_assertions(path, document["assertions"])
    found.signer = _signer_name(chain[0])
    if document["sha256"] != _sha256(path):
        found.state, found.problems = "edited", ["the file's SHA-256 differs from the one signed in its sidecar"]
    return found


# --- verifying -------------------------------------------------------------------------------


def verify_file(path: str | os.PathLike) -> Verification:
    """Read a file's credential back: whether its signature and hashes validate, and what it says."""
    path = Path(path)
    if path.suffix.lower() in SIDECAR_MEDIA:
        return verify_sidecar(path)
    if path.suffix.lower() not in MIME_TYPES:
        return Verification(path, "none", problems=[f"Atelier signs no {path.suffix or 'suffix-less'} files"])
    try:
        with c2pa.Context(settings=c2pa.Settings.from_dict(C2PA_SETTINGS)) as context:
            reader = c2pa.Reader.try_create(str(path), context=context)
            if reader is None:
                return Verification(path, "none")
            with reader:
                manifest = reader.get_active_manifest() or {}
                results = (reader.get_validation_results() or {}).get("activeManifest", {})
                state = reader.get_validation_state()
    except c2pa.C2paError as error:
        return Verification(path, "invalid", problems=[f"the credential cannot be read: {error}"])
    found = _from_assertions(path, manifest.get("assertions", []))
    info = manifest.get("signature_info", {})
    found.signer = ", ".join(part for part in (info.get("common_name"), info.get("issuer")) if part) or None
    failures = results.get("failure", [])
    codes = [failure["code"] for failure in failures]
    found.trusted = state == "Trusted" and UNTRUSTED_CODE not in codes
    found.problems = [f"{failure['code']}: {failure.get('explanation', '')}" for failure in failures
                      if failure["code"] not in NOT_FAILURES]
    if any(code in EDITED_CODES for code in codes):
        found.state = "edited"
    elif found.problems or state not in ("Valid", "Trusted"):
        found.state = "invalid"
    return found


def _from_assertions(path: Path, assertions: list[dict]) -> Verification:
    by_label = {re.sub(r"\.v\d+$", "", assertion["label"]): assertion["data"] for assertion in assertions}
    actions = by_label.get("c2pa.actions", {}).get("actions", [])
    created = next((action for action in actions if action.get("action") == "c2pa.created"), {})
    return Verification(path, "valid", fields=by_label.get(LINEAGE_LABEL, {}),
                        source_type=created.get("digitalSourceType"))


def _signer_name(certificate: x509.Certificate) -> str:
    names = [attribute.value for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
             for attribute in certificate.subject.get_attributes_for_oid(oid)]
    return ", ".join(str(name) for name in names)


STATE_WORDS = {"valid": "valid", "edited": "signed, then edited", "invalid": "credential does not validate",
               "none": "no credential"}


def report_lines(found: Verification) -> list[str]:
    """What `atelier verify` prints."""
    lines = [f"{found.path}: {STATE_WORDS[found.state]}"]
    fields = dict(found.fields)
    if fields:
        lines.append(f"  made by:        {fields.pop('model_name', '?')} version {fields.pop('model_version', '?')}")
    if found.source_type:
        lines.append(f"  source type:    {found.source_type.rsplit('/', 1)[-1]}")
    for key, value in fields.items():
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        lines.append(f"  {key.replace('_', ' ') + ':':<15} {shown}")
    if found.signer:
        lines.append(f"  signed by:      {found.signer}")
        lines.append("  trusted:        " + ("yes" if found.trusted else "no: the certificate is not issued by an authority "
                                                                        "this validator knows (docs/credentials.md)"))
    lines += [f"  problem:        {problem}" for problem in found.problems]
    return lines
