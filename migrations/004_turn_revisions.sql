-- A stored turn can be revised once more is known: when the student reports how much of a
-- spoken reply they heard (`played`), the engine sends the turn again with the reply cut
-- to what was heard and a higher revision. Older revisions never overwrite newer ones.
ALTER TABLE turns ADD COLUMN revision integer NOT NULL DEFAULT 0;
