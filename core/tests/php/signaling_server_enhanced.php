<?php
// A mailbox server behaving like the Go tool's signaling_server_enhanced.php (the one
// its README recommends), for the compatibility tests in core/tests and cli/tests (run
// under `php -S`). Our own code; it reproduces what a stunfwd peer sees of that server:
//
//   every answer                 Content-Type: application/json (the data included)
//   OPTIONS                      204 (CORS preflight)
//   POST {"room","role","data"}  200 {"status":"ok","room_version":N,
//                                     "participant_version":M,"mapping_version":V}
//   GET ?room=R&role=X           200 and the data as posted, or 404
//   GET ?room=R&check_updates=1  200 {"has_update":bool,"version":V,...}
//   PUT {"room","mappings"}      replaces "mappings" inside the client's data
//   DELETE ?room=R               removes the WHOLE room, both roles (404 if none)
//
// No long-poll (`wait` is ignored), versions only inside JSON bodies (no header),
// rooms expire after 5 minutes without activity, and a GET counts as activity. State
// is one pretty-printed JSON file, locked around each request.

header('Content-Type: application/json');
header('Access-Control-Allow-Origin: *');
header('Access-Control-Allow-Methods: GET, POST, PUT, DELETE, OPTIONS');
header('Access-Control-Allow-Headers: Content-Type, X-Mapping-Version');

const ROOM_EXPIRY_SECONDS = 300;

$file = getenv('STUNFWD_ENHANCED_MAILBOX_FILE') ?: sys_get_temp_dir() . '/stunfwd_enhanced_mailbox.json';

// Runs $update on the whole store under an exclusive lock, after dropping expired
// rooms, and writes the store back. Returns what $update returns.
function with_store($file, $update)
{
    $fh = fopen($file, 'c+');
    flock($fh, LOCK_EX);
    $raw = stream_get_contents($fh);
    $store = json_decode($raw === '' ? '{}' : $raw, true) ?: [];
    $now = time();
    foreach ($store as $room => $entry) {
        if ($now - ($entry['last_activity'] ?? $now) > ROOM_EXPIRY_SECONDS) {
            unset($store[$room]);
        }
    }
    $result = $update($store, $now);
    ftruncate($fh, 0);
    rewind($fh);
    fwrite($fh, json_encode($store, JSON_PRETTY_PRINT));
    flock($fh, LOCK_UN);
    fclose($fh);
    return $result;
}

function reply($code, $body)
{
    http_response_code($code);
    echo json_encode($body);
    exit;
}

// Stores $data as $role's entry of $room, counting versions; returns the room.
function put_participant(&$store, $now, $room, $role, $data)
{
    if (!isset($store[$room])) {
        $store[$room] = ['created_at' => $now, 'version' => 1, 'participants' => []];
    }
    $entry = &$store[$room];
    $entry['last_activity'] = $now;
    if (!isset($entry['participants'][$role])) {
        $entry['participants'][$role] = ['first_seen' => $now, 'version' => 1, 'data' => $data];
    } else {
        $entry['participants'][$role]['version']++;
        $entry['participants'][$role]['data'] = $data;
    }
    $entry['participants'][$role]['last_updated'] = $now;
    $entry['version']++;
    $parsed = json_decode($data, true);
    if ($role === 'client' && is_array($parsed) && isset($parsed['mappings'])) {
        $entry['mapping_version'] = $now;
    }
    return $entry;
}

$method = $_SERVER['REQUEST_METHOD'];

if ($method === 'OPTIONS') {
    http_response_code(204);
    exit;
}

if ($method === 'POST') {
    $msg = json_decode(file_get_contents('php://input'), true);
    if (!is_array($msg) || !isset($msg['room'], $msg['role'], $msg['data'])) {
        reply(400, ['error' => 'Missing or invalid room/role/data']);
    }
    $entry = with_store($file, function (&$store, $now) use ($msg) {
        return put_participant($store, $now, $msg['room'], $msg['role'], $msg['data']);
    });
    reply(200, [
        'status' => 'ok',
        'room_version' => $entry['version'],
        'participant_version' => $entry['participants'][$msg['role']]['version'],
        'mapping_version' => $entry['mapping_version'] ?? 0,
    ]);
}

if ($method === 'GET') {
    $room = $_GET['room'] ?? null;
    $role = $_GET['role'] ?? null;
    if (isset($_GET['check_updates']) && $room) {
        $since = intval($_GET['last_mapping_version'] ?? 0);
        $info = with_store($file, function (&$store, $now) use ($room, $since) {
            if (!isset($store[$room])) {
                return null;
            }
            $version = $store[$room]['mapping_version'] ?? 0;
            if ($version > $since) {
                return [
                    'has_update' => true,
                    'version' => $version,
                    'client_data' => $store[$room]['participants']['client']['data'] ?? null,
                ];
            }
            return ['has_update' => false, 'version' => $version];
        });
        echo json_encode($info);
        exit;
    }
    if (!$room || !in_array($role, ['client', 'server'], true)) {
        reply(400, ['error' => 'Missing or invalid room/role']);
    }
    $data = with_store($file, function (&$store, $now) use ($room, $role) {
        if (!isset($store[$room]['participants'][$role])) {
            return null;
        }
        $store[$room]['last_activity'] = $now;
        return $store[$room]['participants'][$role]['data'];
    });
    if ($data) {
        echo $data;
        exit;
    }
    reply(404, ['error' => 'Participant not found']);
}

if ($method === 'PUT') {
    $msg = json_decode(file_get_contents('php://input'), true);
    if (!is_array($msg) || !isset($msg['room'], $msg['mappings'])) {
        reply(400, ['error' => 'Missing room or mappings']);
    }
    $entry = with_store($file, function (&$store, $now) use ($msg) {
        $room = $msg['room'];
        if (!isset($store[$room]['participants']['client'])) {
            return null;
        }
        $client = json_decode($store[$room]['participants']['client']['data'], true) ?: [];
        $client['mappings'] = $msg['mappings'];
        return put_participant($store, $now, $room, 'client', json_encode($client));
    });
    if ($entry === null) {
        reply(404, ['error' => 'Client not found in room']);
    }
    reply(200, ['status' => 'mappings_updated', 'mapping_version' => $entry['mapping_version'] ?? 0]);
}

if ($method === 'DELETE') {
    $room = $_GET['room'] ?? null;
    if (!$room) {
        reply(400, ['error' => 'Missing room parameter']);
    }
    $deleted = with_store($file, function (&$store, $now) use ($room) {
        if (!isset($store[$room])) {
            return false;
        }
        unset($store[$room]);
        return true;
    });
    if ($deleted) {
        reply(200, ['status' => 'room_deleted']);
    }
    reply(404, ['error' => 'Room not found']);
}

reply(405, ['error' => 'Unsupported method']);
