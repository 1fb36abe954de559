-- The services table, modelled on nova.db.main.models.Service.
-- Soft delete: a deleted row keeps deleted_at; only live rows are unique by host + binary,
-- so a service deleted by an operator registers again as a new row (new id and uuid).

CREATE TABLE services (
    id              bigserial PRIMARY KEY,
    uuid            uuid NOT NULL UNIQUE,
    host            text NOT NULL,
    "binary"        text NOT NULL,
    topic           text NOT NULL,
    report_count    bigint NOT NULL DEFAULT 0,
    disabled        boolean NOT NULL DEFAULT false,
    disabled_reason text,
    forced_down     boolean NOT NULL DEFAULT false,
    last_seen_up    timestamptz,
    version         integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz,
    deleted_at      timestamptz
);

-- The ON CONFLICT target of register(); also serves get() and list(host=...).
CREATE UNIQUE INDEX services_host_binary_live_idx
    ON services (host, "binary") WHERE deleted_at IS NULL;

-- list(topic=...) and list(binary=...), e.g. every nova-compute.
CREATE INDEX services_topic_live_idx ON services (topic) WHERE deleted_at IS NULL;
CREATE INDEX services_binary_live_idx ON services ("binary") WHERE deleted_at IS NULL;
