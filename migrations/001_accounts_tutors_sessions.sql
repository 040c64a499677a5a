-- Admins (tenants), their tutors and students, sessions and the turns of each conversation.
-- Every tenant-owned row carries admin_id so that every query can be scoped by it.

CREATE TABLE admins (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL,
    name          text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX admins_email_key ON admins (lower(email));

CREATE TABLE tutors (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    admin_id      uuid NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    name          text NOT NULL,
    subject       text NOT NULL DEFAULT '',
    system_prompt text NOT NULL DEFAULT '',
    greeting      text NOT NULL DEFAULT '',
    language      text NOT NULL DEFAULT 'en',
    voice         text NOT NULL DEFAULT '',
    model         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tutors_admin_idx ON tutors (admin_id, created_at);

CREATE TABLE students (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    admin_id      uuid NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    email         text NOT NULL,
    name          text NOT NULL,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX students_tenant_email_key ON students (admin_id, lower(email));
CREATE INDEX students_email_idx ON students (lower(email));

-- A session's id is the engine's session id. The token is never stored.
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    admin_id    uuid NOT NULL REFERENCES admins (id) ON DELETE CASCADE,
    tutor_id    uuid NOT NULL REFERENCES tutors (id) ON DELETE CASCADE,
    student_id  uuid NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    kb_id       text,
    engine      text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz
);
CREATE INDEX sessions_admin_idx ON sessions (admin_id, created_at DESC);
CREATE INDEX sessions_student_idx ON sessions (student_id, created_at DESC);

-- One finished turn: what the student said (absent for the greeting) and the tutor's reply as
-- it was actually produced. (session_id, response_id) makes a retried delivery a no-op.
CREATE TABLE turns (
    id           bigserial PRIMARY KEY,
    session_id   text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    response_id  text NOT NULL,
    student_text text,
    student_at   timestamptz,
    reply_text   text NOT NULL,
    reply_at     timestamptz NOT NULL,
    interrupted  boolean NOT NULL DEFAULT false,
    metrics      jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, response_id)
);
