-- Lookups by link that scanned whole tables. A read-back marks the case tasks of its link,
-- reads and confirms its grants and resolves its dead letters; a leaver, a grant and a revoke
-- look up the grants of each link. Without these indexes each of them scanned every task,
-- grant or dead letter, so a mass termination (or a large workforce) made them quadratic.
CREATE INDEX case_accounts_link ON case_accounts (link_id);
CREATE INDEX link_grants_link ON link_grants (link_id);
CREATE INDEX dead_letters_open_link ON dead_letters (link_id) WHERE status = 'open';
