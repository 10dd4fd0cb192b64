"""Tenants and API keys. Keys are shown once at creation and stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.db.models import ApiKey, Tenant
from api.errors import Conflict, NotFound

logger = logging.getLogger(__name__)

KEY_SCHEME = "sdft_"
PREFIX_CHARS = 12  # "sdft_" + 7 random characters: enough to tell keys apart, useless to guess


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `key` is the only copy of the secret."""

    id: str
    tenant_id: str
    tenant_name: str
    prefix: str
    key: str


def hash_key(key: str) -> str:
    # A plain sha256 is enough because keys carry 256 random bits; there is nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise ValueError("tenant name must not be empty")
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
        logger.info("created tenant %s (%s)", tenant.name, tenant.id)
    return tenant


def create_key(session: Session, tenant_name: str) -> CreatedKey:
    """Create an API key for `tenant_name`, creating the tenant when it does not exist."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = KEY_SCHEME + secrets.token_urlsafe(32)
    record = ApiKey(tenant_id=tenant.id, prefix=key[:PREFIX_CHARS], key_hash=hash_key(key))
    session.add(record)
    session.flush()
    logger.info(
        "created API key %s (prefix %s) for tenant %s", record.id, record.prefix, tenant.name
    )
    return CreatedKey(record.id, tenant.id, tenant.name, record.prefix, key)


def list_keys(session: Session) -> list[tuple[ApiKey, Tenant]]:
    rows = session.execute(
        select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.id)
    )
    return [(key, tenant) for key, tenant in rows]


def revoke_key(session: Session, prefix_or_id: str) -> ApiKey:
    """Revoke the key whose id or shown prefix is `prefix_or_id`.

    Raises NotFound when nothing matches and Conflict when a prefix matches several keys.
    """
    matches = session.scalars(
        select(ApiKey).where(or_(ApiKey.id == prefix_or_id, ApiKey.prefix == prefix_or_id))
    ).all()
    if not matches:
        raise NotFound(
            f"no API key has id or prefix {prefix_or_id!r}; list keys with `sdft keys list`"
        )
    if len(matches) > 1:
        ids = ", ".join(k.id for k in matches)
        raise Conflict(f"prefix {prefix_or_id!r} matches several keys ({ids}); revoke by id")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        logger.info("revoked API key %s (prefix %s)", key.id, key.prefix)
    return key


def authenticate(session: Session, key: str) -> ApiKey | None:
    """Return the active key record for `key`, or None when unknown or revoked."""
    record = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one_or_none()
    if record is None or record.revoked_at is not None:
        return None
    return record
