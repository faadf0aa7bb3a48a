#include "replication/tls_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"

namespace meridian::replication {
namespace {

template <auto Free>
struct Deleter {
  template <class T>
  void operator()(T* p) const {
    Free(p);
  }
};
using Bio = std::unique_ptr<BIO, Deleter<BIO_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509_free>>;
using Key = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using Store = std::unique_ptr<X509_STORE, Deleter<X509_STORE_free>>;
using StoreCtx = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX_free>>;
// sk_X509_free is a macro, not a function a template can take.
struct StackFree {
  void operator()(STACK_OF(X509) * s) const { sk_X509_free(s); }
};
using CertStack = std::unique_ptr<STACK_OF(X509), StackFree>;

// Every certificate in a PEM text, in order (other blocks, such as a key, are skipped).
std::vector<Cert> Certificates(const std::string& pem) {
  std::vector<Cert> out;
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  while (bio) {
    Cert c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!c) break;
    out.push_back(std::move(c));
  }
  ERR_clear_error();  // the end of the text reads as an error
  return out;
}

// A passphrase callback that refuses: an encrypted key cannot be served (gRPC has no passphrase).
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::Status Bad(const char* field, const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": '", path, "' ", what));
}

}  // namespace

absl::Status CheckTlsIdentity(const std::string& ca_path, const std::string& cert_path,
                              const std::string& key_path, const std::string& name) {
  auto ca_pem = common::ReadPemFile("tls.ca", ca_path);
  if (!ca_pem.ok()) return ca_pem.status();
  auto cert_pem = common::ReadPemFile("tls.cert", cert_path);
  if (!cert_pem.ok()) return cert_pem.status();
  auto key_pem = common::ReadPemFile("tls.key", key_path);
  if (!key_pem.ok()) return key_pem.status();

  std::vector<Cert> cas = Certificates(*ca_pem);
  if (cas.empty()) return Bad("tls.ca", ca_path, "holds no certificate");
  std::vector<Cert> chain = Certificates(*cert_pem);
  if (chain.empty()) return Bad("tls.cert", cert_path, "holds no certificate");
  Bio key_bio(BIO_new_mem_buf(key_pem->data(), static_cast<int>(key_pem->size())));
  Key key(key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr)
                  : nullptr);
  ERR_clear_error();
  if (!key) {
    return Bad("tls.key", key_path,
               "holds no private key that can be read (an encrypted key is "
               "not supported)");
  }
  X509* cert = chain.front().get();
  if (X509_check_private_key(cert, key.get()) != 1) {
    ERR_clear_error();
    return Bad("tls.key", key_path, absl::StrCat("is not the key of tls.cert ('", cert_path, "')"));
  }

  Store store(X509_STORE_new());
  CertStack untrusted(sk_X509_new_null());
  StoreCtx ctx(X509_STORE_CTX_new());
  if (!store || !untrusted || !ctx) return absl::ResourceExhaustedError("out of memory");
  for (const Cert& c : cas) X509_STORE_add_cert(store.get(), c.get());
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted.get(), chain[i].get());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert, untrusted.get()) != 1) {
    return absl::ResourceExhaustedError("cannot set up a certificate check");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return Bad("tls.cert", cert_path,
               absl::StrCat("does not verify against tls.ca ('", ca_path, "'): ",
                            X509_verify_cert_error_string(err), " (peers would refuse it)"));
  }

  char cn[256] = {};
  const int cn_len = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn,
                                               static_cast<int>(sizeof cn));
  if (cn_len < 0 || std::string(cn, static_cast<size_t>(cn_len)) != name) {
    return Bad("tls.cert", cert_path,
               absl::StrCat("has the common name '", cn_len < 0 ? "" : cn, "', not '", name,
                            "' (peers take the caller's name from it)"));
  }
  if (X509_check_host(cert, name.data(), name.size(), 0, nullptr) != 1) {
    return Bad("tls.cert", cert_path,
               absl::StrCat("is not valid for the host name '", name,
                            "' (its subjectAltName must name it: peers check it when they dial)"));
  }
  return absl::OkStatus();
}

}  // namespace meridian::replication
