-- The longest reply a tutor may give, in model tokens: replies are spoken, and a tutor for
-- young children should stop after a few sentences. NULL: the engine's llm.max_tokens.
ALTER TABLE tutors ADD COLUMN max_reply_tokens integer
    CHECK (max_reply_tokens BETWEEN 16 AND 4096);
