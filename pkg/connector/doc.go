// Package connector is the SDK for tenure's connectors: the code that turns "this worker
// should have this access" into accounts in a target system (a SaaS app through SCIM, a
// directory, a database, a human with a checklist) and reads the result back.
//
// # The contract in one paragraph
//
// A connector is a type with one method, GetAccount, that reads an account back. Everything
// else it can do is an optional interface with one job each — Creator, Disabler, Enabler,
// Deleter, EntitlementGranter, SessionRevoker, CredentialRevoker, Lister — and the host
// finds out what a connector can do by type assertion (Capabilities lists them for
// operators). A connector only talks to its target. The provisioner host owns everything
// around the call: retries and backoff, rate limits, timeouts, tracing spans, metrics, the
// read-back that confirms a change, pagination sanity checks, and the audit trail. So a
// connector does not retry, does not sleep, does not log secrets, and does not cache state
// the target already holds.
//
// # Writing a connector
//
// A connector is one package under pkg/connectors/, or a process of its own speaking the gRPC
// ConnectorService (package plugin serves any Connector that way; docs/connectors.md).
// Skeleton:
//
//	package acme
//
//	type Config struct {
//		BaseURL string           `yaml:"base_url"`
//		Token   connector.Secret `yaml:"token"`
//	}
//
//	func init() { connector.Register("acme", open) }
//
//	func open(ctx context.Context, decode func(any) error) (connector.Connector, error) {
//		var cfg Config
//		if err := decode(&cfg); err != nil {
//			return nil, err // already says which line and field
//		}
//		if cfg.BaseURL == "" {
//			return nil, errors.New("base_url is required")
//		}
//		token, err := cfg.Token.Resolve()
//		if err != nil {
//			return nil, fmt.Errorf("token: %w", err)
//		}
//		return &Connector{client: newClient(cfg.BaseURL, token)}, nil
//	}
//
//	var (
//		_ connector.Disabler = (*Connector)(nil) // one line per capability
//		_ connector.Lister   = (*Connector)(nil)
//	)
//
// Then make the binary link the package in (a blank import next to the other connectors), so
// its init registers the type.
//
// Registration has no side effects and neither does opening beyond what talking to the target
// needs: a factory decodes and validates its config and builds a client or a lazy pool. It
// does not create groups, ping the target or start goroutines that outlive Close. A target
// that is down when tenure starts must show up as retryable errors on calls, not as a host
// that cannot start. A connector that holds resources implements io.Closer; hosts call Close.
//
// # Configuration
//
// Operators describe connectors in a YAML file (LoadConfigs, ParseConfigs):
//
//	connectors:
//	  - name: ehr-db          # instance name, [a-z0-9_-]: it is a NATS subject token
//	    type: postgres        # registered type
//	    system: ehr           # policy inventory system; defaults to name
//	    config:               # decoded by the type's factory
//	      url: {env: TENURE_EHR_DB_URL}
//	      role_prefix: ehr_
//
// The decode function a factory receives is strict: a field the config struct does not have
// is an error naming the field and its line in the file, and so is a value of the wrong type.
// Tag config fields with `yaml:"snake_case"` (JSON configs are read as YAML, so json tags are
// not used). Types with their own UnmarshalYAML must do their own strictness.
//
// Credentials are Secret fields. An operator writes a Secret as a plain string, or as
// {env: NAME} or {file: PATH} to keep it out of the file. A Secret prints, logs and marshals
// as [REDACTED]; call Resolve in the factory and keep the resolved value out of errors (some
// client libraries echo connection strings in their parse errors).
//
// # Semantics every connector keeps
//
// Hosts are level-triggered: they converge desired state and may call any method again after
// a timeout, a crash or a duplicate event. Therefore:
//
//   - AccountRef: use ID when it is set (it is what the host stored from an earlier
//     Account.ID), else Username. IDs should survive renames.
//   - GetAccount of an absent account returns an error matching ErrNotFound; State reports
//     what the target says (StateEnabled, StateDisabled), never what the connector assumes.
//   - CreateAccount of an existing username returns the existing account unchanged and no
//     error. In particular it does not re-enable a disabled account: a joiner event that
//     arrives after the termination must not undo it.
//   - DisableAccount of a disabled account succeeds; of an absent one returns ErrNotFound
//     (the host decides whether absence is good enough for the case at hand).
//   - DisableAccount makes the account unusable now. Where the target keeps sessions or
//     tokens alive after a disable, end them too, or at least implement SessionRevoker.
//   - RevokeCredentials (CredentialRevoker) makes the account's passwords, API tokens and
//     keys unusable for good, leaves its state alone, and succeeds when there is nothing
//     left to revoke. The host calls it after a leaver's disable.
//   - EnableAccount of an enabled account succeeds. DeleteAccount of an absent account
//     succeeds.
//   - Granting a held entitlement and revoking one not held succeed. An entitlement the
//     connector does not manage is a Permanent error. Account.Entitlements lists only the
//     entitlements the connector manages.
//   - ListAccounts pages with an opaque token: "" first, next == "" at the end, and the token
//     must change between pages.
//
// # Errors
//
// Map the target's errors onto kinds in one place (the connector's client code), with
// Retryable, RetryableAfter, Permanent and NotFound, and let the host decide what to do
// (KindOf). An error nobody classified counts as retryable: giving up on a leaver's disable
// leaves access in place, so the safe default is to try again and let the dead-letter queue
// catch what never succeeds. Use Permanent for what no retry can fix (a bad request, a
// missing permission, an unknown entitlement, an invalid username), so an operator sees it
// at once. ErrUnsupported says the connector cannot do what was asked at all. ErrPending
// (Pending) says the work was handed to a person through the host's TaskQueue and will be
// confirmed by their attestation, not by a retry (the manual connector).
//
// # What the host does with them
//
// Runner is the host's execution policy, one per target, configured by Policy (the
// connectors file's `policy:` block): a rate limit (token bucket), a concurrency limit, a
// timeout per call, retries of retryable errors with exponential back-off and jitter up to
// MaxAttempts, a target's Retry-After honoured for every call to that target, and a span and
// metrics per call and per operation. Permanent and not-found errors are not retried.
//
// # Testing
//
// Run the conformance suite in package connectortest against a live target (a container, a
// sandbox tenant, a throwaway database) with the connector's feature matrix; it checks every
// rule above. A connector is done when it passes with every capability it implements
// declared. connectortest.Memory is an in-memory connector that passes the suite, for hosts'
// tests and as the smallest example of the contract.
package connector
