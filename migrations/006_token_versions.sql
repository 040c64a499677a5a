-- Every account token carries its account's token_version, checked on each request. Raising
-- it (a password changed or reset, "sign out everywhere") revokes all tokens issued before;
-- a removed account's tokens fail with it.
ALTER TABLE admins ADD COLUMN token_version integer NOT NULL DEFAULT 0;
ALTER TABLE students ADD COLUMN token_version integer NOT NULL DEFAULT 0;
