// Package member runs an etcd member inside this process: the control
// plane's server side, for a pod that brings its own (`aquifer serve
// --embedded` without --etcd-endpoints, `aquifer etcd`). Clients reach it
// through package control like any external cluster; the process that runs
// it may instead call it in-process (Member.Client: etcd's v3client, no
// socket or TLS in between), as the embedded daemon does.
//
// A member serves clients and peers over mutual TLS (Config.TLS: etcd's
// client-cert-auth): a connection without a certificate issued by the
// cluster's CA is refused before any request is read, so no other user of
// the host, and no process without the cluster's credentials, can read or
// write a key through its ports. Package pki makes the certificates.
//
// It is a package of its own so that everything else — the pool, the
// daemon, API clients — links etcd's client only, never its server.
//
// This package owns starting and stopping a member. It must not read or
// write keys: the key layout lives in package control.
package member
