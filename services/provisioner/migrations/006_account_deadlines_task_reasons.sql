-- Each account of a leaver case has its own deadline, from its target: an automatic target
-- gets the provisioner's case deadline (default 5 minutes), a manual target its task deadline
-- (default 1 hour). A manual account's hour no longer stretches the deadline of the automatic
-- disables in the same case. cases.deadline stays the latest of its accounts' deadlines.
-- overdue_alerted_at marks an account already named by a tenure.alert.deprovision_overdue.
ALTER TABLE case_accounts ADD COLUMN deadline timestamptz;
UPDATE case_accounts a SET deadline = c.deadline FROM cases c WHERE c.case_id = a.case_id;
ALTER TABLE case_accounts ALTER COLUMN deadline SET NOT NULL;
ALTER TABLE case_accounts ADD COLUMN overdue_alerted_at timestamptz;

-- A task closed without an attestation (status 'superseded') records when and why: a newer
-- task replaced it, or the link's desired state changed so that the task no longer asks for
-- it (a leave ended before the operator disabled the account, a rescinded termination).
ALTER TABLE tasks ADD COLUMN superseded_at timestamptz;
ALTER TABLE tasks ADD COLUMN superseded_reason text NOT NULL DEFAULT '';
