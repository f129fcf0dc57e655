-- who switched the active version: the console's caller (console:<user or role>), or the user@host of a
-- command-line deploy or rollback; NULL for switches recorded before this column existed
ALTER TABLE model_deployments ADD COLUMN actor text;
