-- Knowledge bases: documents an admin uploads, split into chunks that every turn searches.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE kbs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    admin_id    uuid NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- A PostgreSQL text search configuration: english, french, simple, ...
    language    regconfig NOT NULL DEFAULT 'english',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kbs_admin_idx ON kbs (admin_id, created_at);

CREATE TABLE documents (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kb_id        uuid NOT NULL REFERENCES kbs (id) ON DELETE CASCADE,
    admin_id     uuid NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    filename     text NOT NULL,
    content_type text NOT NULL,
    size_bytes   integer NOT NULL,
    sha256       text NOT NULL,
    status       text NOT NULL DEFAULT 'processing'
                 CHECK (status IN ('processing', 'ready', 'failed')),
    error        text,
    chunks       integer NOT NULL DEFAULT 0,
    -- 0..1 while processing.
    progress     real NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Uploading a file of the same name again replaces it.
    UNIQUE (kb_id, filename)
);

CREATE TABLE chunks (
    id          bigserial PRIMARY KEY,
    document_id uuid NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    kb_id       uuid NOT NULL REFERENCES kbs (id) ON DELETE CASCADE,
    ordinal     integer NOT NULL,
    heading     text NOT NULL DEFAULT '',
    content     text NOT NULL,
    tsv         tsvector NOT NULL,
    -- Filled only when an embeddings endpoint is configured; any dimension.
    embedding   vector
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_kb_idx ON chunks (kb_id);

ALTER TABLE tutors ADD COLUMN kb_id uuid REFERENCES kbs (id) ON DELETE SET NULL;
ALTER TABLE turns ADD COLUMN sources jsonb NOT NULL DEFAULT '[]'::jsonb;
