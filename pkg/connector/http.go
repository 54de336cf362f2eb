package connector

import "net/http"

// HTTPTransport returns the transport for a connector that calls an HTTP target: Go's
// defaults, but keeping an idle connection for every call the host may run at once.
// http.DefaultTransport keeps two per host, so under load (a mass termination runs a target's
// whole concurrency limit) every other call would open a new TCP, and TLS, connection.
func HTTPTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = maxIdlePerHost
	return t
}

// maxIdlePerHost is above any concurrency a target's policy is likely to allow.
const maxIdlePerHost = 64
