package ssf

import (
	"encoding/json"
	"fmt"
	"net/mail"
	"sort"
	"strings"
)

// Subject is an RFC 9493 subject identifier as JSON members: {"format": "email", "email":
// ...}, {"format": "opaque", "id": ...}, or an SSF complex subject {"format": "complex",
// "user": {...}, "tenant": {...}}.
type Subject map[string]any

// Subject identifier formats tenure understands.
const (
	FormatEmail   = "email"
	FormatOpaque  = "opaque"
	FormatComplex = "complex"
)

// complexMembers are the complex-subject members tenure can match: the worker and, when the
// transmitter has a tenant, that tenant.
var complexMembers = []string{"user", "tenant"}

// parseSubject validates raw as a subject identifier and returns it with its key, a normal
// form used to match and to store it once.
func parseSubject(raw json.RawMessage) (Subject, string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, "", fmt.Errorf("subject is required")
	}
	var s Subject
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, "", fmt.Errorf("subject must be a JSON object: %v", err)
	}
	key, err := s.key("subject")
	if err != nil {
		return nil, "", err
	}
	return s, key, nil
}

func (s Subject) str(member string) (string, bool) {
	v, ok := s[member].(string)
	return v, ok && v != ""
}

// key checks s and returns its normal form; where names s in error messages.
func (s Subject) key(where string) (string, error) {
	format, ok := s.str("format")
	if !ok {
		return "", fmt.Errorf("%s.format is required (email, opaque or complex)", where)
	}
	only := func(members ...string) error {
		for m := range s {
			if m != "format" && !contains(members, m) {
				return fmt.Errorf("%s: member %q is not part of the %q format", where, m, format)
			}
		}
		return nil
	}
	switch format {
	case FormatEmail:
		e, ok := s.str("email")
		if !ok {
			return "", fmt.Errorf("%s.email is required for format email", where)
		}
		if a, err := mail.ParseAddress(e); err != nil || a.Address != e {
			return "", fmt.Errorf("%s.email %q is not an email address", where, e)
		}
		return "email:" + strings.ToLower(e), only("email")
	case FormatOpaque:
		id, ok := s.str("id")
		if !ok {
			return "", fmt.Errorf("%s.id is required for format opaque", where)
		}
		return "opaque:" + id, only("id")
	case FormatComplex:
		if _, ok := s["user"]; !ok {
			return "", fmt.Errorf("%s.user is required: tenure's subjects are workers", where)
		}
		var parts []string
		for m, v := range s {
			if m == "format" {
				continue
			}
			if !contains(complexMembers, m) {
				return "", fmt.Errorf("%s: complex member %q is not supported (user, tenant)", where, m)
			}
			obj, ok := v.(map[string]any)
			if !ok {
				return "", fmt.Errorf("%s.%s must be a subject identifier object", where, m)
			}
			sub := Subject(obj)
			if f, _ := sub.str("format"); f == FormatComplex {
				return "", fmt.Errorf("%s.%s: complex subjects do not nest", where, m)
			}
			k, err := sub.key(where + "." + m)
			if err != nil {
				return "", err
			}
			parts = append(parts, m+"="+k)
		}
		sort.Strings(parts)
		return "complex:" + strings.Join(parts, ";"), nil
	default:
		return "", fmt.Errorf("%s.format %q is not supported (email, opaque, complex)", where, format)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// workerKeys are the keys of every subject identifier that names this worker: by email, by
// worker id, and both as the user of a complex subject, with or without the tenant.
func workerKeys(workerID, email, tenant string) []string {
	var users []string
	if workerID != "" {
		users = append(users, "opaque:"+workerID)
	}
	if email != "" {
		users = append(users, "email:"+strings.ToLower(email))
	}
	keys := append([]string(nil), users...)
	for _, u := range users {
		keys = append(keys, "complex:user="+u)
		if tenant != "" {
			// Sorted member order, as key() builds it.
			keys = append(keys, "complex:tenant=opaque:"+tenant+";user="+u)
		}
	}
	return keys
}

// defaultSubject is the sub_id of a worker for a stream that did not add the worker in a
// form of its own: the user by email (what receivers key accounts on) or else by worker id;
// for an account-level revocation, the system as the application (the user lost that
// application, not necessarily every other); and the tenant when the transmitter has one.
func defaultSubject(workerID, email, tenant, application string) Subject {
	user := Subject{"format": FormatOpaque, "id": workerID}
	if email != "" {
		user = Subject{"format": FormatEmail, "email": email}
	}
	if tenant == "" && application == "" {
		return user
	}
	s := Subject{"format": FormatComplex, "user": map[string]any(user)}
	if application != "" {
		s["application"] = map[string]any{"format": FormatOpaque, "id": application}
	}
	if tenant != "" {
		s["tenant"] = map[string]any{"format": FormatOpaque, "id": tenant}
	}
	return s
}
