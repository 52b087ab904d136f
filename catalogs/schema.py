"""Catalog schema as an ordered list of migrations; `schema_version` records which ran.

Add a migration by appending to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

ARTIFACT_COLUMNS = (
    "sha256 VARCHAR NOT NULL, stage VARCHAR NOT NULL, variant VARCHAR NOT NULL, "
    "fingerprint VARCHAR, status VARCHAR NOT NULL, uri VARCHAR, bytes BIGINT, metrics JSON, "
    "error_type VARCHAR, error VARCHAR, log VARCHAR, attempts INTEGER NOT NULL, retryable BOOLEAN, "
    "run_id VARCHAR, node_id VARCHAR, seconds DOUBLE, updated_at TIMESTAMP"
)

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "core tables: assets, artifacts (+ history), runs, models, subsets, relations",
        f"""
        CREATE TABLE assets (
            sha256 VARCHAR PRIMARY KEY,
            source VARCHAR NOT NULL,
            file_identifier VARCHAR,
            locator VARCHAR,
            format VARCHAR,
            size_bytes BIGINT,
            license VARCHAR,
            captions VARCHAR,            -- JSON array of strings, NULL when none (never '[]')
            aesthetic_score DOUBLE,      -- the score published by the source
            extra JSON,                  -- passthrough columns of the source listing
            added_at TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE artifacts ({ARTIFACT_COLUMNS}, PRIMARY KEY (sha256, stage, variant));
        CREATE TABLE artifact_events ({ARTIFACT_COLUMNS});
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            started_at TIMESTAMP, finished_at TIMESTAMP,
            status VARCHAR, spec JSON, plan JSON, counts JSON, host VARCHAR, versions JSON
        );
        CREATE TABLE models (
            stage VARCHAR NOT NULL, variant VARCHAR NOT NULL, weights_sha256 VARCHAR NOT NULL,
            config JSON, source VARCHAR, pretrained BOOLEAN NOT NULL, note VARCHAR,
            registered_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (stage, variant, weights_sha256)
        );
        CREATE TABLE subsets (
            name VARCHAR PRIMARY KEY, rule VARCHAR, description VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        );
        CREATE TABLE subset_members (
            subset VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, source VARCHAR,
            PRIMARY KEY (subset, sha256)
        );
        CREATE TABLE asset_relations (
            sha_a VARCHAR NOT NULL, sha_b VARCHAR NOT NULL, relation VARCHAR NOT NULL, score DOUBLE,
            PRIMARY KEY (sha_a, sha_b, relation)
        );
        CREATE TABLE estimates (
            estimate_id VARCHAR PRIMARY KEY, created_at TIMESTAMP DEFAULT current_timestamp,
            spec JSON, selection VARCHAR, cluster JSON, per_stage JSON, totals JSON
        );
        """,
    ),
    (
        2,
        "latent_stats: per-channel latent mean/std and the selection that produced them",
        """
        CREATE TABLE latent_stats (
            stats_id VARCHAR PRIMARY KEY,
            stage VARCHAR NOT NULL, variant VARCHAR NOT NULL,
            selection VARCHAR,           -- SQL yielding sha256 (NULL = every asset)
            n_selected BIGINT,           -- current latents in the selection
            n_used BIGINT, n_failed BIGINT, sample_size BIGINT, seed BIGINT,
            inputs_sha256 VARCHAR,       -- hash of the (sha256, fingerprint) pairs actually used
            mean JSON, std JSON, uri VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        );
        """,
    ),
]
