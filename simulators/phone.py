"""A cardholder's phone app and the payment channels behind it, as HTTP clients of a real server.

`PhoneApp` speaks the cardholder API (`/api/v1`) the way the campus app does: bind with name,
staff/student number and card PIN (绑卡), list and remove the holder's bound phones, then query, report a card
lost with the card PIN (挂失), recharge through a channel (卡充值), ask for Bluetooth water grants and hand in
the dispensers' receipts (扫码用水). The payment channels behind a recharge order (the order's `pay`
request, their notifications to the server, retries) are simulators/pay_gateways.py's sandboxes.
Used by the demo and the tests.
"""
import httpx

_TIMEOUT_S = 30.0


class PhoneError(Exception):
    def __init__(self, status, body):
        Exception.__init__(self, "%d: %s" % (status, body))
        self.status = status
        self.body = body


class PhoneApp:
    def __init__(self, server_url, app_user_id):
        self.app_user_id = app_user_id
        self.http = httpx.Client(base_url=server_url.rstrip("/") + "/api/v1", timeout=_TIMEOUT_S)
        self.token = None
        self.account_id = None

    def close(self):
        self.http.close()

    def _call(self, method, path, body=None):
        headers = {"Authorization": "Bearer %s" % self.token} if self.token else {}
        response = self.http.request(method, path, json=body, headers=headers)
        if response.status_code >= 400:
            raise PhoneError(response.status_code, response.text)
        return response.json()

    def bind(self, name, staff_number, pin):
        answer = self._call("POST", "/bind", {"app_user_id": self.app_user_id, "name": name,
                                              "staff_number": staff_number, "pin": pin})
        self.token, self.account_id = answer["token"], answer["account_id"]
        return answer

    def phones(self):
        return self._call("GET", "/phones")["phones"]

    def remove_phone(self, phone_id):
        return self._call("DELETE", "/phones/%s" % phone_id)

    def balance(self):
        return self._call("GET", "/accounts/%d/balance" % self.account_id)

    def report_loss(self, pin):
        return self._call("POST", "/accounts/%d/report-loss" % self.account_id, {"pin": pin})

    def recharge_order(self, amount_fen, channel):
        return self._call("POST", "/accounts/%d/recharge-orders" % self.account_id,
                          {"amount_fen": amount_fen, "channel": channel})

    def order(self, order_id):
        return self._call("GET", "/accounts/%d/recharge-orders/%s" % (self.account_id, order_id))

    # 扫码用水: the server's half of Bluetooth water (the radio's half is simulators/phone_ble.py)
    def water_grant(self, dispenser_id, challenge):
        """A signed grant for the dispenser's CHALLENGE read (bytes); the grant comes back as bytes."""
        answer = self._call("POST", "/water/grants", {"dispenser_id": dispenser_id, "challenge": bytes(challenge).hex()})
        answer["grant"] = bytes.fromhex(answer["grant"])
        return answer

    def water_receipt(self, receipt):
        """Hand in the dispenser's usage receipt (bytes); returns the grant's state and outcome."""
        return self._call("POST", "/water/receipts", {"receipt": bytes(receipt).hex()})

    def water_give_up(self, grant_id):
        return self._call("POST", "/water/grants/%d/cancel" % grant_id)

    def water_grant_state(self, grant_id):
        return self._call("GET", "/water/grants/%d" % grant_id)


    # 付款码: the server's half (the phone's key and its codes are simulators/phone_paycode.py's)
    def paycode_enable(self, public_key, pin):
        answer = self._call("POST", "/paycode/credentials", {"public_key": bytes(public_key).hex(), "pin": pin})
        answer["certificate"] = bytes.fromhex(answer["certificate"])
        return answer

    def paycode_renew(self, credential_id):
        answer = self._call("POST", "/paycode/credentials/%d/certificate" % credential_id)
        answer["certificate"] = bytes.fromhex(answer["certificate"])
        return answer

    def paycode_stop(self, credential_id):
        return self._call("POST", "/paycode/credentials/%d/stop" % credential_id)

    def paycode_uses(self, credential_id, since_ms=0):
        return self._call("GET", "/paycode/credentials/%d/uses?since_ms=%d" % (credential_id, since_ms))

    def change_pin(self, old_pin, new_pin):
        return self._call("POST", "/accounts/%d/pin" % self.account_id, {"old_pin": old_pin, "new_pin": new_pin})
