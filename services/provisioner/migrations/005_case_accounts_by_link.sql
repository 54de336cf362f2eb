-- A read-back marks the case tasks of its link, and failures, manual tasks and re-drives find
-- them, by link_id: without this index each of those scans every task of every case, which
-- makes a mass termination quadratic.
CREATE INDEX case_accounts_link ON case_accounts (link_id);
