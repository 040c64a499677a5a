-- The engine reports sessions it ended by itself (idle or over age) as "expired".
ALTER TABLE sessions DROP CONSTRAINT sessions_status_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_status_check
    CHECK (status IN ('active', 'ended', 'expired'));
