/*
 * jitgate webhook sender (Business Rule script). Ready to paste; see README.md.
 *
 * One rule per table, same script: sc_req_item, change_request, sysapproval_approver.
 * When: after. Insert + Update. Advanced: checked. Conditions: see README.md.
 *
 * It sends the contract jitgate publishes:
 *   body: {"event","table","sys_id","sys_mod_count","sys_updated_on","sys_updated_by",
 *          "record":{raw values; references as {"value","display_value"}},
 *          "changed":[...], "variables":{...}, "approvals":[...]}
 *   X-Jitgate-Event-Id:  <table>:<sys_id>:<sys_mod_count>
 *   X-Jitgate-Timestamp: <epoch seconds>
 *   X-Jitgate-Signature: v1=<base64 HMAC-SHA256(secret, timestamp + "." + body)>
 *
 * generateMac() takes its key Base64-encoded and returns the MAC Base64-encoded, so the
 * plain-text secret is Base64-encoded first: both sides then MAC with the same bytes.
 */
(function executeRule(current, previous /* null on insert */) {
    var ENDPOINT_PROPERTY = 'x_jitgate.endpoint';       // https://jitgate.example.com/webhooks/servicenow
    var SECRET_PROPERTY = 'x_jitgate.webhook_secret';   // same text as JITGATE_SERVICENOW_WEBHOOK_SECRET
    var TICKET_TABLES = {sc_req_item: true, change_request: true};
    var FIELDS = {
        sc_req_item: ['number', 'short_description', 'state', 'stage', 'approval', 'active',
                      'cat_item', 'requested_for', 'opened_by', 'request', 'closed_at'],
        change_request: ['number', 'short_description', 'type', 'state', 'approval', 'active',
                         'start_date', 'end_date', 'requested_by', 'assigned_to'],
        sysapproval_approver: ['approver', 'state', 'sysapproval', 'document_id',
                               'source_table', 'group']
    };

    var table = current.getTableName();
    var fields = FIELDS[table];
    if (!fields) {
        return;
    }
    var sourceTable = '';
    if (table == 'sysapproval_approver') {
        // The approved record's table: jitgate re-reads that RITM or change.
        sourceTable = current.getValue('source_table') ||
            (current.sysapproval.nil() ? '' : String(current.sysapproval.sys_class_name));
        if (!TICKET_TABLES[sourceTable]) {
            return;  // approvals of other records (e.g. sc_request) are not ours
        }
    }
    var endpoint = gs.getProperty(ENDPOINT_PROPERTY, '');
    var secret = gs.getProperty(SECRET_PROPERTY, '');
    if (!endpoint || !secret) {
        gs.error('jitgate: set the ' + ENDPOINT_PROPERTY + ' and ' + SECRET_PROPERTY + ' properties');
        return;
    }

    function raw(gr, name) {
        var value = gr.getValue(name);
        return value === null ? '' : String(value);
    }

    // Raw value; references also carry their display value, as a label only.
    function field(gr, name) {
        var element = gr.getElement(name);
        var value = raw(gr, name);
        if (element && value && element.getED().getInternalType() == 'reference') {
            return {value: value, display_value: String(element.getDisplayValue())};
        }
        return value;
    }

    var record = {};
    var changed = [];
    for (var i = 0; i < fields.length; i++) {
        record[fields[i]] = field(current, fields[i]);
        // changes() needs the previous version: available in "after" rules, not "async".
        if (previous && current.getElement(fields[i]).changes()) {
            changed.push(fields[i]);
        }
    }
    if (table == 'sysapproval_approver' && !record.source_table) {
        record.source_table = sourceTable;
    }

    var sysId = current.getUniqueValue();
    var body = {
        event: previous ? 'record.updated' : 'record.inserted',
        table: table,
        sys_id: sysId,
        sys_mod_count: parseInt(raw(current, 'sys_mod_count') || '0', 10),
        sys_updated_on: raw(current, 'sys_updated_on'),   // UTC, "YYYY-MM-DD HH:MM:SS"
        sys_updated_by: raw(current, 'sys_updated_by'),
        changed: changed,
        record: record
    };

    if (table == 'sc_req_item') {
        body.variables = {};
        var option = new GlideRecord('sc_item_option_mtom');
        option.addQuery('request_item', sysId);
        option.query();
        while (option.next()) {
            var name = String(option.sc_item_option.item_option_new.name);
            if (name) {
                body.variables[name] = String(option.sc_item_option.value);
            }
        }
    }
    if (TICKET_TABLES[table]) {
        body.approvals = [];
        var approval = new GlideRecord('sysapproval_approver');
        approval.addQuery('sysapproval', sysId);
        approval.query();
        while (approval.next()) {
            body.approvals.push({
                sys_id: approval.getUniqueValue(),
                approver: field(approval, 'approver'),
                state: raw(approval, 'state'),
                sys_updated_on: raw(approval, 'sys_updated_on')
            });
        }
    }

    // Pure-ASCII body (non-ASCII as \uXXXX, still the same JSON): the signed bytes are
    // then the sent bytes whatever charset the outbound HTTP layer picks.
    var text = JSON.stringify(body).replace(/[\u0080-\uffff]/g, function (c) {
        return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
    });
    var ts = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
    // Scoped applications: use gs.base64Encode(secret) instead of GlideStringUtil.
    var mac = new CertificateEncryption().generateMac(
        GlideStringUtil.base64Encode(secret), 'HmacSHA256', ts + '.' + text);

    var request = new sn_ws.RESTMessageV2();
    request.setEndpoint(endpoint);
    request.setHttpMethod('post');
    request.setHttpTimeout(10000);
    request.setRequestHeader('Content-Type', 'application/json');
    request.setRequestHeader('X-Jitgate-Event-Id', table + ':' + sysId + ':' + body.sys_mod_count);
    request.setRequestHeader('X-Jitgate-Timestamp', ts);
    request.setRequestHeader('X-Jitgate-Signature', 'v1=' + mac);
    request.setRequestBody(text);
    // Through the ECC queue: the user's transaction never waits for jitgate. There is no
    // retry; a lost delivery is picked up by jitgate's reconciliation poll.
    request.executeAsync();
})(current, previous);
