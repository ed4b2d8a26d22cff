/* The phone app's own storage: one IndexedDB object store of named records, on the phone only.

   IndexedDB rather than localStorage because it keeps a WebCrypto CryptoKey as it is (structured
   clone): the pay-code private key is stored non-extractable, so no script - ours included - can
   ever read its bytes, only ask the browser to sign with it. The records:

     "device"       {app_user_id}: made once, the app's identity towards /api/v1/bind
     "session"      {token, account_id}: the bearer token of the bound cardholder
     "paycode"      the pay-code wallet (paycode_wallet.js): key pair, certificate, counter, clock offset
     "pending_key"  a key pair sent to be certified whose answer has not come: a retry sends it again,
                    so a lost answer never leaves a second credential on the server
     "balance"      {account_id, wallets, name, staff_number, at_ms}: the last balance the server gave,
                    shown offline */
"use strict";
(function (ykt) {
  const DB_NAME = "ykt-app";
  const DB_VERSION = 1;
  const STORE = "records";
  let opening = null;

  function open() {
    if (!opening) {
      opening = new Promise((resolve, reject) => {
        const request = indexedDB.open(DB_NAME, DB_VERSION);
        request.onupgradeneeded = () => request.result.createObjectStore(STORE);
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => { opening = null; reject(request.error); };
      });
    }
    return opening;
  }

  /* One request in its own transaction; resolves once the transaction is committed. */
  async function run(mode, action) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = action(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  }

  ykt.store = {
    get: (name) => run("readonly", (store) => store.get(name)),
    put: (name, value) => run("readwrite", (store) => store.put(value, name)),
    remove: (name) => run("readwrite", (store) => store.delete(name)),
  };
})(self.ykt = self.ykt || {});
