// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/**
 * @title EnergyToken
 * @notice The market's currency. Prices are quoted in tokens per kWh; one token is meant to
 * track one unit of the local currency (a euro, say).
 *
 * @dev Decimals are 6, not 18: a kWh costs tens of cents, so the smallest payment the market
 * makes (1 Wh at a feed-in price of a few cents per kWh) is a few micro-tokens, and 6 decimals
 * bill it exactly. With 6 decimals every amount the market handles fits in 96 bits, which lets
 * the metering and settlement contracts pack balances next to other fields in one storage
 * slot, and wallets show amounts the way people read money.
 *
 * Minting is done by the regulator (MINTER_ROLE), in idempotent batches so that a distribution
 * that is re-run or resumed after a crash mints nothing twice. Approvals can be given by
 * signature (EIP-2612) so that meter agents and wallets can fund escrow in one transaction.
 */
contract EnergyToken is ERC20, ERC20Permit, AccessControl {
    /// @notice Role allowed to mint.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @notice Batch ids that have been minted; a batch id mints at most once.
    mapping(bytes32 batchId => bool) public batchMinted;

    /// @dev The admin passed to the constructor was the zero address.
    error EnergyTokenZeroAdmin();
    /// @dev The mint batch `batchId` has been minted before.
    error EnergyTokenBatchAlreadyMinted(bytes32 batchId);
    /// @dev The recipients and amounts of a batch differ in length.
    error EnergyTokenBatchLengthMismatch(uint256 recipients, uint256 amounts);

    /// @notice A mint batch was minted: `count` recipients, `total` tokens in base units.
    event BatchMinted(bytes32 indexed batchId, uint256 count, uint256 total);

    /**
     * @param name_ Token name shown by wallets, e.g. "Feeder 7 Energy Token".
     * @param symbol_ Token symbol shown by wallets, e.g. "kWhT".
     * @param admin Account that receives DEFAULT_ADMIN_ROLE and MINTER_ROLE.
     */
    constructor(string memory name_, string memory symbol_, address admin) ERC20(name_, symbol_) ERC20Permit(name_) {
        if (admin == address(0)) revert EnergyTokenZeroAdmin();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /**
     * @notice Mints `amount` base units to `to`.
     * @dev Only MINTER_ROLE.
     */
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /**
     * @notice Mints one batch of a distribution, at most once per `batchId`.
     * @dev Only MINTER_ROLE. The caller derives `batchId` from the distribution's content, so
     * re-sending a batch (a retried or resumed run) reverts instead of minting twice.
     * @param batchId Unique id of this batch.
     * @param recipients Accounts to mint to.
     * @param amounts Base units for each recipient, same order.
     */
    function mintBatch(
        bytes32 batchId,
        address[] calldata recipients,
        uint256[] calldata amounts
    ) external onlyRole(MINTER_ROLE) {
        if (recipients.length != amounts.length) {
            revert EnergyTokenBatchLengthMismatch(recipients.length, amounts.length);
        }
        if (batchMinted[batchId]) revert EnergyTokenBatchAlreadyMinted(batchId);
        batchMinted[batchId] = true;
        uint256 total;
        for (uint256 i = 0; i < recipients.length; ++i) {
            _mint(recipients[i], amounts[i]);
            total += amounts[i];
        }
        emit BatchMinted(batchId, recipients.length, total);
    }
}
