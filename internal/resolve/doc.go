// Package resolve reads the Kubernetes objects behind a Service — from the
// API server (narrowly) or from files — and models what the Service asks of
// the data path: its addresses, ports and endpoints.
package resolve
