-- Invitations to register an organisation, for servers with web.allow_registration = false.
-- Made by the server's operator (`tutorsrv invites create`); only a hash of the code is kept,
-- so the table does not let anyone who reads it register. Each invite admits one
-- registration (used_by) before it expires.
CREATE TABLE registration_invites (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code_sha256 bytea NOT NULL UNIQUE,
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     uuid REFERENCES admins (id) ON DELETE SET NULL
);
